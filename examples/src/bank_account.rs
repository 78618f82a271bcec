//! A bank account: open, deposit, withdraw within an overdraft limit, close; and usernames
//! that point to accounts, so that money can be paid to `@alice`.
//!
//! The account is a small state machine — `Unopened -> Open -> Closed` — declared with
//! `#[derive(Aggregate)]`, `#[transitions]` and `#[derive(DomainEvent)]`. A [`Username`] is
//! another: `Free -> Claimed -> Free`, claimed by one account at a time.

use cqrs_core::{Aggregate, Command, DomainEvent, InvalidTransition, transitions};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Amounts in cents.
pub type Cents = i64;

/// The account's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Aggregate)]
#[aggregate(command = AccountCommand, event = AccountEvent, error = AccountError)]
pub enum BankAccount {
    /// Nothing happened yet.
    #[default]
    Unopened,
    /// Open for business.
    Open {
        /// Who owns it.
        owner: String,
        /// Current balance; negative within the overdraft limit.
        balance: Cents,
        /// How far below zero the balance may go.
        overdraft_limit: Cents,
    },
    /// Closed for good.
    #[aggregate(terminal)]
    Closed,
}

/// What can be asked of an account.
#[derive(Debug, Clone, PartialEq, Eq, Command)]
pub enum AccountCommand {
    /// Open the account.
    Open {
        /// Owner's name.
        owner: String,
        /// Allowed overdraft.
        overdraft_limit: Cents,
    },
    /// Put money in.
    Deposit {
        /// How much (positive).
        amount: Cents,
    },
    /// Take money out.
    Withdraw {
        /// How much (positive).
        amount: Cents,
    },
    /// Close the account; the balance must be zero.
    Close,
}

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, DomainEvent)]
#[event(json_schema)]
pub enum AccountEvent {
    /// The account was opened.
    Opened {
        /// Owner's name.
        owner: String,
        /// Allowed overdraft.
        overdraft_limit: Cents,
    },
    /// Money was deposited.
    Deposited {
        /// How much.
        amount: Cents,
    },
    /// Money was withdrawn.
    Withdrawn {
        /// How much.
        amount: Cents,
    },
    /// The account was closed.
    Closed,
}

/// Why an account refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Amounts must be positive.
    #[error("amount must be positive, got {0}")]
    InvalidAmount(Cents),
    /// The withdrawal would exceed the overdraft limit.
    #[error(
        "insufficient funds: balance {balance}, requested {requested}, overdraft limit {overdraft_limit}"
    )]
    InsufficientFunds {
        /// Balance before the withdrawal.
        balance: Cents,
        /// Requested amount.
        requested: Cents,
        /// Allowed overdraft.
        overdraft_limit: Cents,
    },
    /// Only an account with a zero balance can be closed.
    #[error("balance must be zero to close, it is {0}")]
    BalanceNotZero(Cents),
    /// The command makes no sense in the account's state.
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
}

#[transitions]
impl BankAccount {
    #[transition(from = Unopened, on = Open, to = Open)]
    fn open(
        &self,
        owner: String,
        overdraft_limit: Cents,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        if overdraft_limit < 0 {
            return Err(AccountError::InvalidAmount(overdraft_limit));
        }
        Ok(vec![AccountEvent::Opened {
            owner,
            overdraft_limit,
        }])
    }

    #[transition(from = Open, on = Deposit, to = Open)]
    fn deposit(&self, amount: Cents) -> Result<Vec<AccountEvent>, AccountError> {
        positive(amount)?;
        Ok(vec![AccountEvent::Deposited { amount }])
    }

    // The handler binds the fields of the state it leaves: `balance` and `overdraft_limit` come
    // from `Open { .. }`, `amount` from the command.
    #[transition(from = Open { balance, overdraft_limit }, on = Withdraw, to = Open)]
    fn withdraw(
        &self,
        balance: &Cents,
        overdraft_limit: &Cents,
        amount: Cents,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        positive(amount)?;
        if balance - amount < -overdraft_limit {
            return Err(AccountError::InsufficientFunds {
                balance: *balance,
                requested: amount,
                overdraft_limit: *overdraft_limit,
            });
        }
        Ok(vec![AccountEvent::Withdrawn { amount }])
    }

    #[transition(from = Open { balance }, on = Close, to = Closed)]
    fn close(&self, balance: &Cents) -> Result<Vec<AccountEvent>, AccountError> {
        if *balance != 0 {
            return Err(AccountError::BalanceNotZero(*balance));
        }
        Ok(vec![AccountEvent::Closed])
    }

    fn evolve(self, event: &AccountEvent) -> Self {
        match (self, event) {
            (
                _,
                AccountEvent::Opened {
                    owner,
                    overdraft_limit,
                },
            ) => Self::Open {
                owner: owner.clone(),
                balance: 0,
                overdraft_limit: *overdraft_limit,
            },
            (
                Self::Open {
                    owner,
                    balance,
                    overdraft_limit,
                },
                AccountEvent::Deposited { amount },
            ) => Self::Open {
                owner,
                balance: balance + amount,
                overdraft_limit,
            },
            (
                Self::Open {
                    owner,
                    balance,
                    overdraft_limit,
                },
                AccountEvent::Withdrawn { amount },
            ) => Self::Open {
                owner,
                balance: balance - amount,
                overdraft_limit,
            },
            (_, AccountEvent::Closed) => Self::Closed,
            // Events are facts: one that does not fit the state leaves it unchanged.
            (state, _) => state,
        }
    }
}

/// A username: free until an account claims it; then it points to that account, and no other
/// can claim it, until it is released.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Aggregate)]
#[aggregate(command = UsernameCommand, event = UsernameEvent, error = UsernameError)]
pub enum Username {
    /// Nobody has it.
    #[default]
    Free,
    /// An account has it.
    Claimed {
        /// The account's id.
        account: String,
    },
}

/// What can be asked of a username.
#[derive(Debug, Clone, PartialEq, Eq, Command)]
pub enum UsernameCommand {
    /// Point the username to an account.
    Claim {
        /// The account's id.
        account: String,
    },
    /// Free the username.
    Release,
}

/// What happened to a username.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, DomainEvent)]
#[event(json_schema)]
pub enum UsernameEvent {
    /// An account claimed the username.
    Claimed {
        /// The account's id.
        account: String,
    },
    /// The username was freed.
    Released,
}

/// Why a username refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// Another account has the username.
    #[error("the username is taken by {holder}")]
    Taken {
        /// The account that has it.
        holder: String,
    },
    /// The command makes no sense in the username's state.
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
}

#[transitions]
impl Username {
    #[transition(from = Free, on = Claim, to = Claimed)]
    fn claim(&self, account: String) -> Result<Vec<UsernameEvent>, UsernameError> {
        Ok(vec![UsernameEvent::Claimed { account }])
    }

    // Claimed already: refused, naming the holder (the state's `account`, bound as `holder`).
    #[transition(from = Claimed { account: holder }, on = Claim, to = Claimed)]
    fn taken(&self, holder: &str, account: String) -> Result<Vec<UsernameEvent>, UsernameError> {
        if holder == account {
            return Ok(Vec::new());
        }
        Err(UsernameError::Taken {
            holder: holder.to_owned(),
        })
    }

    #[transition(from = Claimed, on = Release, to = Free)]
    fn release(&self) -> Result<Vec<UsernameEvent>, UsernameError> {
        Ok(vec![UsernameEvent::Released])
    }

    fn evolve(self, event: &UsernameEvent) -> Self {
        match event {
            UsernameEvent::Claimed { account } => Self::Claimed {
                account: account.clone(),
            },
            UsernameEvent::Released => Self::Free,
        }
    }
}

fn positive(amount: Cents) -> Result<(), AccountError> {
    if amount > 0 {
        Ok(())
    } else {
        Err(AccountError::InvalidAmount(amount))
    }
}

impl BankAccount {
    /// The balance, if the account is open.
    pub fn balance(&self) -> Option<Cents> {
        match self {
            Self::Open { balance, .. } => Some(*balance),
            _ => None,
        }
    }
}

/// Opens account `from` with 4000 and moves 2500 of it to `to` in one atomic commit, each
/// command under fresh `metadata()`.
///
/// A transfer touches two accounts: a unit of work decides each command on its own account and
/// commits both, each account guarded by the version it was decided on.
async fn transfer<S: cqrs_core::EventStore>(
    accounts: &cqrs_core::Repository<BankAccount, S>,
    from: &str,
    to: &str,
    metadata: impl Fn() -> cqrs_core::CommandMetadata,
    out: &mut impl std::fmt::Write,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let open = AccountCommand::Open {
        owner: "Alice".into(),
        overdraft_limit: 0,
    };
    accounts.execute(from, open, metadata()).await?;
    let deposit = AccountCommand::Deposit { amount: 4_000 };
    accounts.execute(from, deposit, metadata()).await?;
    let command = metadata();
    let tenant = command.tenant.clone();
    let mut transfer = cqrs_core::UnitOfWork::new(command);
    let withdraw = AccountCommand::Withdraw { amount: 2_500 };
    transfer.execute(accounts, from, withdraw).await?;
    let deposit = AccountCommand::Deposit { amount: 2_500 };
    transfer.execute(accounts, to, deposit).await?;
    let moved = transfer.commit(accounts.store()).await?;
    let balance = |id| cqrs_core::StreamId::of::<BankAccount>(id, tenant.as_deref());
    writeln!(
        out,
        "transfer of 2500 from {from} to {to}: positions {:?}, balances {:?} and {:?}",
        moved
            .iter()
            .flat_map(|c| c.events.iter().map(|e| e.position))
            .collect::<Vec<_>>(),
        accounts.load(&balance(from)).await?.state.balance(),
        accounts.load(&balance(to)).await?.state.balance(),
    )?;
    Ok(())
}

/// A payment to whatever account `@username` points to, decided but not committed: it reads
/// the username (a read guard, so the commit holds only while the username still points there),
/// then withdraws from `from` and deposits to that account.
async fn pay_to_username<S: cqrs_core::EventStore>(
    accounts: &cqrs_core::Repository<BankAccount, S>,
    usernames: &cqrs_core::Repository<Username, S>,
    from: &str,
    username: &str,
    amount: Cents,
    metadata: cqrs_core::CommandMetadata,
) -> Result<(cqrs_core::UnitOfWork, String), Box<dyn std::error::Error + Send + Sync>> {
    let mut payment = cqrs_core::UnitOfWork::new(metadata);
    let Username::Claimed { account } = payment.read(usernames, username).await?.state else {
        return Err(format!("nobody has @{username}").into());
    };
    payment
        .execute(accounts, from, AccountCommand::Withdraw { amount })
        .await?;
    payment
        .execute(accounts, &account, AccountCommand::Deposit { amount })
        .await?;
    Ok((payment, account))
}

/// `@alice` claimed for `to` (and refused to `from`), a payment from `from` to `@alice`, and a
/// second payment refused because `@alice` was released between its decision and its commit.
async fn usernames<S: cqrs_core::EventStore + Clone>(
    accounts: &cqrs_core::Repository<BankAccount, S>,
    from: &str,
    to: &str,
    metadata: impl Fn() -> cqrs_core::CommandMetadata,
    out: &mut impl std::fmt::Write,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use cqrs_core::{CommandError, StoreError};
    let usernames = cqrs_core::Repository::<Username, S>::new(accounts.store().clone());
    let claim = |account: &str| UsernameCommand::Claim {
        account: account.to_owned(),
    };
    usernames.execute("alice", claim(to), metadata()).await?;
    writeln!(out, "@alice claimed by {to}")?;
    match usernames.execute("alice", claim(from), metadata()).await {
        Err(CommandError::Rejected(reason)) => writeln!(out, "@alice for {from}: {reason}")?,
        other => return Err(format!("a second claim of @alice got {other:?}").into()),
    }

    let tenant = metadata().tenant;
    let balance = |id: &str| {
        let stream = cqrs_core::StreamId::of::<BankAccount>(id, tenant.as_deref());
        async move { Ok::<_, StoreError>(accounts.load(&stream).await?.state.balance().unwrap_or(0)) }
    };
    let (payment, payee) =
        pay_to_username(accounts, &usernames, from, "alice", 500, metadata()).await?;
    payment.commit(accounts.store()).await?;
    writeln!(
        out,
        "paid 500 from {from} to @alice ({payee}): balances {} and {}",
        balance(from).await?,
        balance(&payee).await?
    )?;

    // Decided while @alice points to `to`; @alice is released before the commit.
    let (payment, _) =
        pay_to_username(accounts, &usernames, from, "alice", 500, metadata()).await?;
    usernames
        .execute("alice", UsernameCommand::Release, metadata())
        .await?;
    match payment.commit(accounts.store()).await {
        Err(StoreError::Conflict {
            stream, expected, ..
        }) => writeln!(
            out,
            "payment refused: {} {} moved since it was read at {expected:?}; balances {} and {}",
            stream.aggregate_type,
            stream.aggregate_id,
            balance(from).await?,
            balance(to).await?
        )?,
        other => return Err(format!("a payment to a released @alice got {other:?}").into()),
    }
    Ok(())
}

/// The `bank_account` example's walkthrough, written to `out`, against any event store.
///
/// Opens an account, deposits, withdraws into the overdraft, has a withdrawal refused, moves
/// money from a second account in one atomic commit, travels back to an earlier version,
/// prints the full event log with its metadata, then claims a username for the first account
/// and pays to it, guarded by reading where the username points.
pub async fn demo<S: cqrs_core::EventStore + Clone>(
    store: S,
    out: &mut impl std::fmt::Write,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use cqrs_core::{CommandError, CommandMetadata, Repository};

    let accounts = Repository::<BankAccount, S>::new(store).with_snapshots_every(10);
    let id = "acc-1";
    let stream = cqrs_core::StreamId::of::<BankAccount>(id, Some("acme"));
    let as_alice = || {
        CommandMetadata::root()
            .with_tenant("acme")
            .with_actor("user:alice")
    };

    let steps = [
        AccountCommand::Open {
            owner: "Alice".into(),
            overdraft_limit: 5_000,
        },
        AccountCommand::Deposit { amount: 12_000 },
        AccountCommand::Withdraw { amount: 15_000 },
    ];
    for command in steps {
        let committed = accounts.execute(id, command.clone(), as_alice()).await?;
        for event in &committed {
            writeln!(out, "v{} {:?}", event.version, event.payload)?;
        }
    }
    writeln!(
        out,
        "balance: {:?}",
        accounts.load(&stream).await?.state.balance()
    )?;

    // The overdraft rule refuses this one; nothing is stored.
    match accounts
        .execute(id, AccountCommand::Withdraw { amount: 3_000 }, as_alice())
        .await
    {
        Err(CommandError::Rejected(reason)) => writeln!(out, "rejected: {reason}")?,
        Ok(events) => return Err(format!("the overdraft rule let {events:?} through").into()),
        Err(other) => return Err(other.into()),
    }
    // So is closing an account that is not settled, and anything on a closed account.
    if let Err(CommandError::Rejected(reason)) = accounts
        .execute(id, AccountCommand::Close, as_alice())
        .await
    {
        writeln!(out, "rejected: {reason}")?;
    }

    transfer(&accounts, "acc-2", id, as_alice, out).await?;

    let earlier = accounts.state_at_version(&stream, 2).await?;
    writeln!(
        out,
        "time travel to v{}: balance {:?}",
        earlier.version(),
        earlier.state.balance()
    )?;

    writeln!(out, "event log:")?;
    for event in accounts.history(&stream, 1).await? {
        let m = &event.metadata;
        writeln!(
            out,
            "  #{pos} v{v} {ty} tenant={tenant} actor={actor} correlation={corr} causation={cause}",
            pos = event.position,
            v = event.version,
            ty = cqrs_core::DomainEvent::event_type(&event.payload),
            tenant = m.tenant.as_deref().unwrap_or("-"),
            actor = m.actor.as_deref().unwrap_or("-"),
            corr = m.correlation_id,
            cause = m
                .causation_id
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
        )?;
    }

    usernames(&accounts, "acc-2", id, as_alice, out).await
}

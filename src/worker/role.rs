//! The kinds of background worker the extension runs, and how one worker is named.

/// What a background worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// One per cluster (static): starts and stops the workers of each database.
    Launcher,
    /// Delivers the outbox over SMTP (`email_accounts.senders` per database).
    Sender,
    /// Pulls inboxes over IMAP/POP3 (one per database).
    Receiver,
}

impl Role {
    /// Name as shown in `pg_stat_activity.backend_type` and the server log.
    pub fn worker_name(self) -> &'static str {
        match self {
            Role::Launcher => "email_accounts launcher",
            Role::Sender => "email_accounts sender",
            Role::Receiver => "email_accounts receiver",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Role::Launcher => "launcher",
            Role::Sender => "sender",
            Role::Receiver => "receiver",
        }
    }

    fn code(self) -> u64 {
        match self {
            Role::Launcher => 0,
            Role::Sender => 1,
            Role::Receiver => 2,
        }
    }

    /// Which of a restore's locks the worker waits on (sql/restore.sql).
    pub fn restore_lock(self) -> crate::store::restore::Worker {
        match self {
            Role::Sender | Role::Launcher => crate::store::restore::Worker::Sender,
            Role::Receiver => crate::store::restore::Worker::Receiver,
        }
    }
}

/// One database worker: its database, role and, for senders, which one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId {
    /// The database's oid.
    pub database: u32,
    pub role: Role,
    /// 0 for the receiver; 0.. for the senders.
    pub instance: u8,
}

impl WorkerId {
    pub fn receiver(database: u32) -> WorkerId {
        WorkerId { database, role: Role::Receiver, instance: 0 }
    }

    pub fn sender(database: u32, instance: u8) -> WorkerId {
        WorkerId { database, role: Role::Sender, instance }
    }

    /// Index of this worker's slot in its database's entry on the board.
    pub fn slot(self) -> usize {
        match self.role {
            Role::Receiver | Role::Launcher => 0,
            Role::Sender => 1 + self.instance as usize,
        }
    }

    /// The background worker's argument: database, role and instance in one Datum.
    pub fn to_argument(self) -> u64 {
        (u64::from(self.database) << 16) | (self.role.code() << 8) | u64::from(self.instance)
    }

    pub fn from_argument(argument: u64) -> Option<WorkerId> {
        let role = match (argument >> 8) & 0xff {
            1 => Role::Sender,
            2 => Role::Receiver,
            _ => return None,
        };
        let instance = (argument & 0xff) as u8;
        let database = u32::try_from(argument >> 16).ok()?;
        if instance as usize >= crate::settings::MAX_SENDERS || database == 0 {
            return None;
        }
        Some(WorkerId { database, role, instance })
    }

    /// "email_accounts sender 2" / "email_accounts receiver", for the log.
    pub fn name(self) -> String {
        match self.role {
            Role::Sender if self.instance > 0 => format!("{} {}", self.role.worker_name(), self.instance + 1),
            _ => self.role.worker_name().to_owned(),
        }
    }
}

//! The kinds of background worker the extension runs.

/// One static background worker per role, registered at server start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Delivers the outbox over SMTP.
    Sender,
    /// Pulls inboxes over IMAP/POP3.
    Receiver,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Sender, Role::Receiver];

    /// Name as shown in `pg_stat_activity.backend_type` and the server log.
    pub fn worker_name(self) -> &'static str {
        match self {
            Role::Sender => "email_accounts sender",
            Role::Receiver => "email_accounts receiver",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
        }
    }

    /// Index of this role's slot in shared memory; also the worker's argument.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Which of a restore's locks the worker waits on (sql/restore.sql).
    pub fn restore_lock(self) -> crate::store::restore::Worker {
        match self {
            Role::Sender => crate::store::restore::Worker::Sender,
            Role::Receiver => crate::store::restore::Worker::Receiver,
        }
    }

    pub fn from_index(index: i64) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.index() as i64 == index)
    }
}

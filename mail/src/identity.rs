//! Who a message is from: the From and Reply-To headers and the envelope
//! sender, from the account's settings and the sender the mail names.

use crate::address::parse_mailbox;
use lettre::message::Mailbox;

/// The sending account's side of the decision.
#[derive(Debug, Clone, Default)]
pub struct SendingAccount {
    pub name: String,
    pub address: String,
    pub always_use_account_address_as_sender: bool,
    pub always_use_account_name_as_sender_name: bool,
    /// The tenant's default incoming address, for replies to mail sent as someone else.
    pub default_incoming_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub from: String,
    pub reply_to: Vec<String>,
    /// MAIL FROM: the account's own address (it authenticates as it); the
    /// sender may sign it per row (signed_envelope_sender, return_path.rs).
    pub envelope_from: String,
}

/// From is the requested sender, unless the account always sends as itself
/// or none was given; the display name is the account name when the account
/// says so or the sender has none. When mail goes out as someone else and
/// names no Reply-To, replies go to the tenant's default incoming account.
pub fn identity(account: &SendingAccount, sender: Option<&str>, reply_to: &[String]) -> Identity {
    let requested: Option<Mailbox> = sender.and_then(|sender| parse_mailbox(sender).ok());
    let address = match &requested {
        Some(mailbox) if !account.always_use_account_address_as_sender => mailbox.email.to_string(),
        _ => account.address.clone(),
    };
    let name = match &requested {
        Some(Mailbox { name: Some(name), .. }) if !account.always_use_account_name_as_sender_name => name.clone(),
        _ => account.name.clone(),
    };
    let from = Mailbox::new(Some(name), address.parse().expect("addresses were checked at insert")).to_string();
    let sending_as_someone_else = !address.eq_ignore_ascii_case(&account.address);
    let reply_to = if !reply_to.is_empty() {
        reply_to.to_vec()
    } else if sending_as_someone_else {
        account.default_incoming_address.iter().cloned().collect()
    } else {
        Vec::new()
    };
    Identity { from, reply_to, envelope_from: account.address.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> SendingAccount {
        SendingAccount {
            name: "Acme Support".to_owned(),
            address: "support@acme.example".to_owned(),
            default_incoming_address: Some("inbox@acme.example".to_owned()),
            ..SendingAccount::default()
        }
    }

    #[test]
    fn the_account_itself_when_no_sender_is_named() {
        let chosen = identity(&account(), None, &[]);
        assert_eq!(chosen.from, "Acme Support <support@acme.example>");
        assert_eq!(chosen.reply_to, Vec::<String>::new());
        assert_eq!(chosen.envelope_from, "support@acme.example");
    }

    #[test]
    fn a_named_sender_with_replies_to_the_default_incoming_account() {
        let chosen = identity(&account(), Some("Ann Smith <ann@acme.example>"), &[]);
        assert_eq!(chosen.from, "Ann Smith <ann@acme.example>");
        assert_eq!(chosen.reply_to, ["inbox@acme.example"]);
        assert_eq!(chosen.envelope_from, "support@acme.example");
        let explicit = identity(&account(), Some("ann@acme.example"), &["desk@acme.example".to_owned()]);
        assert_eq!(explicit.reply_to, ["desk@acme.example"]);
        assert_eq!(explicit.from, "Acme Support <ann@acme.example>", "no display name: the account name");
    }

    #[test]
    fn accounts_that_always_send_as_themselves() {
        let mut always = account();
        always.always_use_account_address_as_sender = true;
        let chosen = identity(&always, Some("Ann Smith <ann@acme.example>"), &[]);
        assert_eq!(chosen.from, "Ann Smith <support@acme.example>");
        assert_eq!(chosen.reply_to, Vec::<String>::new());
        always.always_use_account_name_as_sender_name = true;
        assert_eq!(
            identity(&always, Some("Ann Smith <ann@acme.example>"), &[]).from,
            "Acme Support <support@acme.example>"
        );
    }
}

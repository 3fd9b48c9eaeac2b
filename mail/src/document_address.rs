//! Document addresses for automatic linking (ERPNext's "Enable Automatic
//! Linking"): an account's address with a sub-address naming one
//! application row, `support+<table>=<id>@example.com`. Mail sent or copied
//! there is linked to that row even when it answers nothing.
//!
//! Both parts are UTF-8 with only letters, digits and `-` left as they
//! are and every other byte written `_XX` (hex), so any table name and key
//! round-trips and the local part stays a plain dot-atom: no dots, no `+`,
//! `=` or quotes of its own, and no `%` (Postfix's and Sendmail's "percent
//! hack" rewrites `user%host@…`). ERPNext's form
//! `support+Sales%20Order+SO-0001@…` (percent-encoded, type and name
//! separated by `+`) is read too.

/// The document address of the row `id` of `table` for the account address `address`.
pub fn encode(address: &str, table: &str, id: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    Some(format!("{local}+{}={}@{domain}", quote(table), quote(id)))
}

/// The (table, id) that `recipient` names, when it is a document address of
/// the account address `address` (local part and domain compared without
/// regard to case, as mail systems do).
pub fn decode(recipient: &str, address: &str) -> Option<(String, String)> {
    let tag = crate::address::sub_address(recipient, address)?;
    let (table, id) = tag.split_once('=').or_else(|| tag.split_once('+'))?;
    let (table, id) = (unquote(table)?, unquote(id)?);
    (!table.is_empty() && !id.is_empty()).then_some((table, id))
}

fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            quoted.push(byte as char);
        } else {
            quoted.push_str(&format!("_{byte:02X}"));
        }
    }
    quoted
}

/// `_XX` (ours) and `%XX` (ERPNext's) back to bytes.
fn unquote(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut plain = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'_' || bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            plain.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            plain.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_table_and_key_round_trip() {
        let cases = [
            ("app.orders", "SO-0001"),
            ("\"Sales Order\"", "SO 1/2+3=4"),
            ("public.\"Ünïcode\"", "ключ 🔑"),
            ("a.b", "%41 already.quoted..dots"),
        ];
        for (table, id) in cases {
            let address = encode("support@example.com", table, id).unwrap();
            let local = address.rsplit_once('@').unwrap().0;
            assert!(local.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_+=".contains(&byte)), "{address}");
            assert_eq!(local.matches('+').count(), 1, "{address}");
            assert_eq!(decode(&address, "support@example.com"), Some((table.to_owned(), id.to_owned())), "{address}");
            assert_eq!(
                decode(&format!("Someone <{address}>"), "Support@Example.COM").map(|found| found.1),
                Some(id.to_owned())
            );
        }
    }

    #[test]
    fn only_the_accounts_own_tagged_addresses_are_read() {
        assert_eq!(decode("support@example.com", "support@example.com"), None);
        assert_eq!(decode("support+orders=1@other.com", "support@example.com"), None);
        assert_eq!(decode("supporter+orders=1@example.com", "support@example.com"), None);
        assert_eq!(decode("sales+orders=1@example.com", "support@example.com"), None);
        assert_eq!(decode("support+orders=@example.com", "support@example.com"), None);
        assert_eq!(decode("support+orders=%ZZ@example.com", "support@example.com"), None);
        assert_eq!(decode("support+orders=_FF@example.com", "support@example.com"), None, "not UTF-8");
        // A multi-byte character where the account's local part ends.
        assert_eq!(decode("supporé+a=b@example.com", "support@example.com"), None);
        // ERPNext's own form.
        assert_eq!(
            decode("support+Sales%20Order+SO-0001@example.com", "support@example.com"),
            Some(("Sales Order".to_owned(), "SO-0001".to_owned()))
        );
    }
}

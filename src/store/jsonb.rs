//! jsonb values built in memory, with PostgreSQL's own jsonb builder: no
//! JSON text printed in Rust and parsed again by `jsonb_in` (that round trip
//! was 4 % of the receiver's CPU storing mail's headers).

use pgrx::pg_sys;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::prelude::*;
use std::ffi::{c_char, c_int};
use std::ptr;

/// The longest string a jsonb value can hold (`JENTRY_OFFLENMASK`).
const LONGEST_STRING: usize = 0x0FFF_FFFF;

/// A message's headers as the `headers` column holds them, in the message's
/// order: `[{"name": …, "value": …}, …]`.
pub struct HeaderList<'a>(pub &'a [(String, String)]);

impl IntoDatum for HeaderList<'_> {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let mut state: *mut pg_sys::JsonbParseState = ptr::null_mut();
        // SAFETY: pushJsonbValue copies each pushed JsonbValue; the strings
        // they point to (`self.0` and static keys) outlive the build, and
        // JsonbValueToJsonb copies them into the result, palloc'd in the
        // current memory context.
        unsafe {
            push(&mut state, pg_sys::JsonbIteratorToken::WJB_BEGIN_ARRAY, None);
            for (name, value) in self.0 {
                push(&mut state, pg_sys::JsonbIteratorToken::WJB_BEGIN_OBJECT, None);
                push(&mut state, pg_sys::JsonbIteratorToken::WJB_KEY, Some("name"));
                push(&mut state, pg_sys::JsonbIteratorToken::WJB_VALUE, Some(name));
                push(&mut state, pg_sys::JsonbIteratorToken::WJB_KEY, Some("value"));
                push(&mut state, pg_sys::JsonbIteratorToken::WJB_VALUE, Some(value));
                push(&mut state, pg_sys::JsonbIteratorToken::WJB_END_OBJECT, None);
            }
            let array = push(&mut state, pg_sys::JsonbIteratorToken::WJB_END_ARRAY, None);
            Some(pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(array)))
        }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

/// One step of the builder: a structural token, or a string key or value.
unsafe fn push(
    state: &mut *mut pg_sys::JsonbParseState,
    token: pg_sys::JsonbIteratorToken::Type,
    string: Option<&str>,
) -> *mut pg_sys::JsonbValue {
    let Some(text) = string else {
        return pg_sys::pushJsonbValue(state, token, ptr::null_mut());
    };
    // What jsonb_in refuses too (a message holds at most max_message_size).
    if text.len() > LONGEST_STRING {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            "a header of the message is too long for jsonb",
            format!("It has {} bytes; jsonb holds at most {LONGEST_STRING}.", text.len())
        );
    }
    let mut value = pg_sys::JsonbValue {
        type_: pg_sys::jbvType::jbvString,
        val: pg_sys::JsonbValue__bindgen_ty_1 {
            string: pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 {
                len: text.len() as c_int,
                val: text.as_ptr() as *mut c_char,
            },
        },
    };
    pg_sys::pushJsonbValue(state, token, &mut value)
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::HeaderList;
    use pgrx::prelude::*;
    use pgrx::JsonB;

    /// The same jsonb as printing the headers as JSON text and parsing it:
    /// quotes, backslashes, control characters, non-ASCII, empty strings,
    /// names given twice, and no headers at all.
    #[pg_test]
    fn headers_built_in_memory_equal_the_parsed_text() {
        let cases: Vec<Vec<(String, String)>> = vec![
            vec![],
            vec![
                ("Subject".into(), "caf\u{e9} \u{1F600} \"quoted\" back\\slash".into()),
                ("X-Control".into(), "tab\there\u{1}\u{1f} new\nline\r".into()),
                ("".into(), "".into()),
                ("Received".into(), "from a".into()),
                ("Received".into(), "from b".into()),
                ("X-Long".into(), "v".repeat(100_000)),
            ],
        ];
        for headers in cases {
            let text = serde_json::Value::Array(
                headers.iter().map(|(name, value)| serde_json::json!({ "name": name, "value": value })).collect(),
            );
            let same = Spi::get_one_with_args::<bool>(
                "SELECT $1::jsonb = $2::jsonb AND $1::jsonb::text = $2::jsonb::text",
                &[HeaderList(&headers).into(), JsonB(text).into()],
            )
            .unwrap();
            assert_eq!(same, Some(true), "{headers:?}");
        }
    }
}

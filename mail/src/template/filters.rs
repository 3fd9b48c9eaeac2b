//! Filters mail needs, formatted for the mail's language: `date` and
//! `number`. The locale data is glibc's, as chrono and pure-rust-locales
//! carry it (month names, date formats, decimal and thousands separators);
//! `default` and the rest are minijinja's built-ins.

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use minijinja::{Environment, Error, ErrorKind};
use pure_rust_locales::{locale_match, Locale};

pub fn add(environment: &mut Environment<'static>, language: Option<&str>) {
    let locale = locale(language);
    let base = language.map(|language| language.split(['-', '_']).next().unwrap_or_default().to_ascii_lowercase());
    environment.add_filter("date", move |value: String, style: Option<String>| {
        format_date(&value, style.as_deref().unwrap_or("long"), locale, base.as_deref())
    });
    environment.add_filter("number", move |value: f64, decimals: Option<u32>| {
        if !value.is_finite() {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("number: {value} is not a finite number")));
        }
        Ok(format_number(value, decimals.unwrap_or(2).min(12), locale))
    });
}

/// The glibc locale of a BCP 47 tag: `pt-BR` → pt_BR, `de` → de_DE, else en_US.
pub fn locale(language: Option<&str>) -> Locale {
    let Some(language) = language else {
        return Locale::en_US;
    };
    let mut subtags = language.split(['-', '_']);
    let base = subtags.next().unwrap_or_default().to_ascii_lowercase();
    let region = subtags.find(|subtag| subtag.len() == 2).map(str::to_ascii_uppercase);
    let usual_region = match base.as_str() {
        "en" => "US",
        "ja" => "JP",
        "zh" => "CN",
        "sv" => "SE",
        "da" => "DK",
        "el" => "GR",
        "cs" => "CZ",
        "uk" => "UA",
        "ko" => "KR",
        "nb" => "NO",
        "et" => "EE",
        "sl" => "SI",
        "ca" => "ES",
        _ => "",
    };
    let candidates = [
        region.map(|region| format!("{base}_{region}")),
        (!usual_region.is_empty()).then(|| format!("{base}_{usual_region}")),
        Some(format!("{base}_{}", base.to_ascii_uppercase())),
    ];
    candidates.into_iter().flatten().find_map(|name| Locale::try_from(name.as_str()).ok()).unwrap_or(Locale::en_US)
}

/// `style`: short (the locale's numeric date), long (day, month name,
/// year in the language's order), datetime (short date and hh:mm), or a
/// strftime pattern.
fn format_date(value: &str, style: &str, locale: Locale, base: Option<&str>) -> Result<String, Error> {
    let value = value.trim();
    let (date, time) = if let Ok(moment) = DateTime::parse_from_rfc3339(value) {
        (moment.date_naive(), Some(moment))
    } else if let Ok(moment) = NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f"))
    {
        (moment.date(), Some(moment.and_utc().fixed_offset()))
    } else if let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        (date, None)
    } else {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("date: {value:?} is not an ISO 8601 date or timestamp"),
        ));
    };
    let long = match base {
        Some("de") | Some("da") | Some("nb") | Some("fi") | Some("cs") => "%-d. %B %Y",
        Some("pt") | Some("es") => "%-d de %B de %Y",
        Some("en") | None => "%B %-d, %Y",
        _ => "%-d %B %Y",
    };
    let pattern = match style {
        "short" => "%x",
        "long" => long,
        "datetime" => "%x %H:%M",
        pattern if pattern.contains('%') => pattern,
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("date: style {other:?} is not short, long, datetime or a strftime pattern"),
            ))
        }
    };
    let mut text = String::new();
    let written = match time {
        Some(moment) => std::fmt::write(&mut text, format_args!("{}", moment.format_localized(pattern, locale))),
        None => std::fmt::write(&mut text, format_args!("{}", date.format_localized(pattern, locale))),
    };
    written.map_err(|_| {
        Error::new(ErrorKind::InvalidOperation, format!("date: {pattern:?} is not a valid pattern for this value"))
    })?;
    Ok(text)
}

/// `1234567.891` → `1,234,567.89` (en), `1.234.567,89` (de), `1 234 567,89` (fr).
fn format_number(value: f64, decimals: u32, locale: Locale) -> String {
    let decimal_point = locale_match!(locale => LC_NUMERIC::DECIMAL_POINT);
    let thousands = locale_match!(locale => LC_NUMERIC::THOUSANDS_SEP);
    let plain = format!("{:.*}", decimals as usize, value.abs());
    let (whole, fraction) = plain.split_once('.').unwrap_or((&plain, ""));
    let mut grouped = String::new();
    for (index, digit) in whole.chars().enumerate() {
        if index > 0 && (whole.len() - index) % 3 == 0 {
            grouped.push_str(thousands);
        }
        grouped.push(digit);
    }
    let sign = if value < 0.0 && plain.chars().any(|digit| digit.is_ascii_digit() && digit != '0') { "-" } else { "" };
    if fraction.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}{}{fraction}", if decimal_point.is_empty() { "." } else { decimal_point })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_dates_follow_the_language() {
        assert_eq!(format_number(1234567.891, 2, locale(Some("en"))), "1,234,567.89");
        assert_eq!(format_number(1234567.891, 2, locale(Some("de"))), "1.234.567,89");
        assert_eq!(format_number(1234.5, 2, locale(Some("fr"))), "1\u{202f}234,50");
        assert_eq!(format_number(-0.001, 2, locale(Some("en"))), "0.00");
        assert_eq!(format_number(-12.5, 0, locale(Some("en"))), "-12");
        assert_eq!(format_number(999.0, 0, locale(Some("pt-BR"))), "999");
        let long =
            |language: &str| format_date("2026-12-02", "long", locale(Some(language)), Some(&language[..2])).unwrap();
        assert_eq!(long("en"), "December 2, 2026");
        assert_eq!(long("de"), "2. Dezember 2026");
        assert_eq!(long("pt-BR"), "2 de dezembro de 2026");
        assert_eq!(long("fr"), "2 décembre 2026");
        assert_eq!(
            format_date("2026-12-02T17:05:00+01:00", "short", locale(Some("de")), Some("de")).unwrap(),
            "02.12.2026"
        );
        assert_eq!(
            format_date("2026-12-02T17:05:00+01:00", "datetime", locale(Some("en-GB")), Some("en")).unwrap(),
            "02/12/26 17:05"
        );
        assert!(format_date("yesterday", "long", locale(None), None).is_err());
        assert!(format_date("2026-12-02", "fancy", locale(None), None).is_err());
        assert_eq!(locale(Some("xx-YY")), Locale::en_US);
        assert_eq!(locale(Some("pt-BR")), Locale::pt_BR);
        assert_eq!(locale(Some("pt")), Locale::pt_PT);
    }
}

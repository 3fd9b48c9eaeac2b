//! Reading templates for rendering: a chosen row's version and sources, and
//! the template an `{% include %}` names for a tenant and language (chosen
//! by email_accounts.choose_template(), as the caller: row-level security applies).

use super::kept_plans;

/// A template row's version: xmin and ctid change with every update (also a
/// second one in the same transaction, which keeps xmin) and with a restore.
macro_rules! version_of_template_row {
    () => {
        "template.xmin::text || ':' || template.ctid::text"
    };
}
use email_accounts_mail::template::{Part, TemplateSource};
use pgrx::prelude::*;
use pgrx::spi::SpiError;

/// A row's version (see version_of_template_row).
pub fn version(template_id: i64) -> Result<Option<String>, SpiError> {
    kept_plans::get_one::<String>(
        concat!("SELECT ", version_of_template_row!(), " FROM email_accounts.template WHERE template_id = $1"),
        &[template_id.into()],
    )
}

/// A row's version and sources.
pub fn sources(template_id: i64) -> Result<Option<(String, TemplateSource)>, SpiError> {
    Spi::connect(|client| {
        let table = kept_plans::select(
            client,
            concat!(
                "SELECT ",
                version_of_template_row!(),
                ", subject, body_text, body_html FROM email_accounts.template WHERE template_id = $1"
            ),
            &[template_id.into()],
        )?;
        let Some(row) = table.first() else {
            return Ok(None);
        };
        Ok(Some((
            row.get::<String>(1)?.unwrap_or_default(),
            TemplateSource { subject: row.get(2)?, body_text: row.get(3)?, body_html: row.get(4)? },
        )))
    })
}

/// An included template's name and the row it stands for (template_id and
/// version), or none.
pub type ChosenVersion = (String, Option<(i64, String)>);

/// The template each of `names` stands for, for `tenant` and `language`.
pub fn chosen_versions(
    names: &[String],
    tenant: Option<&str>,
    language: Option<&str>,
) -> Result<Vec<ChosenVersion>, SpiError> {
    Spi::connect(|client| {
        let table = kept_plans::select(
            client,
            concat!(
                "SELECT wanted.name, chosen.template_id,
                        (SELECT ",
                version_of_template_row!(),
                " FROM email_accounts.template WHERE template.template_id = chosen.template_id)
                   FROM unnest($1::text[]) WITH ORDINALITY AS wanted (name, position),
                        LATERAL email_accounts.choose_template($2, wanted.name, $3) AS chosen
                  ORDER BY wanted.position"
            ),
            &[names.to_vec().into(), tenant.into(), language.into()],
        )?;
        table
            .into_iter()
            .map(|row| {
                let name = row.get::<String>(1)?.unwrap_or_default();
                let chosen = match (row.get::<i64>(2)?, row.get::<String>(3)?) {
                    (Some(id), Some(version)) => Some((id, version)),
                    _ => None,
                };
                Ok((name, chosen))
            })
            .collect()
    })
}

/// The part of the template `name` stands for (for `tenant` and
/// `language`), with its id and version; `None` when there is no such template.
pub fn included(
    name: &str,
    part: Part,
    tenant: Option<&str>,
    language: Option<&str>,
) -> Result<Option<(i64, String, Option<String>)>, SpiError> {
    Spi::connect(|client| {
        let table = kept_plans::select(
            client,
            concat!(
                "SELECT chosen.template_id,
                        (SELECT ",
                version_of_template_row!(),
                " FROM email_accounts.template WHERE template.template_id = chosen.template_id),
                        CASE $4 WHEN 'subject' THEN chosen.subject WHEN 'body_text' THEN chosen.body_text ELSE chosen.body_html END
                   FROM email_accounts.choose_template($2, $1, $3) AS chosen
                  WHERE chosen.template_id IS NOT NULL"
            ),
            &[name.into(), tenant.into(), language.into(), part.column().into()],
        )?;
        let Some(row) = table.first() else {
            return Ok(None);
        };
        Ok(Some((row.get::<i64>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default(), row.get(3)?)))
    })
}

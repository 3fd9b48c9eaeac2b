//! Rendering templates (issue 17) inside the caller's transaction: the
//! outbox's insert trigger and render_template() call
//! render_chosen_template() with the row email_accounts.choose_template()
//! picked. Compiled templates are kept per backend, keyed by row, tenant and
//! language, and used again while the row and every template it included
//! are unchanged (their xmin and ctid), so a trigger sending mail compiles once.

use super::errors::{internal, raise};
use crate::store::templates;
use email_accounts_mail::template::{check_syntax, included_templates, Compiled, IncludeLoader, Part, TemplateSource};
use pgrx::prelude::*;
use pgrx::JsonB;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// More compiled templates than this and the cache starts afresh.
const MOST_CACHED: usize = 256;

type Key = (i64, Option<String>, Option<String>);

/// Included templates a compiled one loaded: name → (template_id, version).
type Dependencies = Arc<Mutex<Vec<templates::ChosenVersion>>>;

struct Cached {
    version: String,
    dependencies: Dependencies,
    compiled: Compiled,
}

thread_local! {
    static CACHE: RefCell<HashMap<Key, Cached>> = RefCell::new(HashMap::new());
}

/// Why the template's parts cannot be compiled (with the part and line), or NULL.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn template_problem(subject: Option<&str>, body_text: Option<&str>, body_html: Option<&str>) -> Option<String> {
    let source = TemplateSource {
        subject: subject.map(str::to_owned),
        body_text: body_text.map(str::to_owned),
        body_html: body_html.map(str::to_owned),
    };
    check_syntax(&source).err().map(|error| error.to_string())
}

/// The templates the parts include by a literal name.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn included_template_names(subject: Option<&str>, body_text: Option<&str>, body_html: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for source in [subject, body_text, body_html].into_iter().flatten() {
        for name in included_templates(source) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Renders the template row `template_id` over `context` for `tenant` (whose
/// templates its includes name) in `language`; raises 22023 naming
/// `template_name`, the language, and the part, line and variable at fault.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn render_chosen_template(
    template_id: i64,
    context: JsonB,
    language: Option<&str>,
    tenant: Option<&str>,
    template_name: &str,
) -> TableIterator<
    'static,
    (name!(subject, Option<String>), name!(body_text, Option<String>), name!(body_html, Option<String>)),
> {
    let key: Key = (template_id, tenant.map(str::to_owned), language.map(|language| language.to_ascii_lowercase()));
    // Taken out while rendering: an error (which unwinds) leaves no half-used entry behind.
    let cached = CACHE.with(|cache| cache.borrow_mut().remove(&key));
    let cached = match cached.filter(|cached| still_current(cached, template_id, tenant, language)) {
        Some(cached) => cached,
        None => compile(template_id, tenant, language, template_name),
    };
    let rendered = cached
        .compiled
        .render(&context.0, &|| {
            pgrx::check_for_interrupts!();
        })
        .unwrap_or_else(|error| {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("template {template_name:?}{}: {error}", language_note(language)),
                None,
            )
        });
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() >= MOST_CACHED {
            cache.clear();
        }
        cache.insert(key, cached);
    });
    TableIterator::once((rendered.subject, rendered.body_text, rendered.body_html))
}

fn language_note(language: Option<&str>) -> String {
    language.map(|language| format!(" (language {language})")).unwrap_or_default()
}

/// The row and every template it included are as they were when compiled.
fn still_current(cached: &Cached, template_id: i64, tenant: Option<&str>, language: Option<&str>) -> bool {
    if templates::version(template_id).unwrap_or_else(|error| internal(error)).as_deref() != Some(&cached.version) {
        return false;
    }
    let loaded = cached.dependencies.lock().map(|loaded| loaded.clone()).unwrap_or_default();
    if loaded.is_empty() {
        return true;
    }
    let names: Vec<String> = loaded.iter().map(|(name, _)| name.clone()).collect();
    templates::chosen_versions(&names, tenant, language).unwrap_or_else(|error| internal(error)) == loaded
}

fn compile(template_id: i64, tenant: Option<&str>, language: Option<&str>, template_name: &str) -> Cached {
    let Some((version, source)) = templates::sources(template_id).unwrap_or_else(|error| internal(error)) else {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("template {template_name:?} does not exist"), None)
    };
    let dependencies: Dependencies = Arc::default();
    let loaded = dependencies.clone();
    let (tenant_owned, language_owned) = (tenant.map(str::to_owned), language.map(str::to_owned));
    // Called by minijinja while rendering, on this thread (SPI is fine here).
    let loader: Arc<IncludeLoader> = Arc::new(move |name: &str, part: Part| {
        let found = templates::included(name, part, tenant_owned.as_deref(), language_owned.as_deref())
            .map_err(|error| error.to_string())?;
        if let Ok(mut loaded) = loaded.lock() {
            let entry = (name.to_owned(), found.as_ref().map(|(id, version, _)| (*id, version.clone())));
            if !loaded.contains(&entry) {
                loaded.push(entry);
            }
        }
        Ok(found.and_then(|(_, _, source)| source))
    });
    let compiled = Compiled::new(&source, language, loader).unwrap_or_else(|error| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("template {template_name:?}{}: {error}", language_note(language)),
            None,
        )
    });
    Cached { version, dependencies, compiled }
}

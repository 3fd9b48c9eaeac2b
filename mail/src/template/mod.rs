//! Mail templates (issue 17): a subject, a text body and an HTML body in
//! Jinja syntax, rendered by minijinja over a JSON context. Strict about
//! undefined variables, HTML auto-escaping in the HTML body (and what it
//! includes) only, `{% include 'name' %}` of other templates through a
//! loader the caller gives (the extension reads them from the database),
//! and filters formatted for the mail's language (`filters.rs`). No I/O here.

mod filters;
mod includes;

pub use includes::included_templates;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use std::sync::{Arc, Mutex};

/// The three parts of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Subject,
    Text,
    Html,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Subject, Part::Text, Part::Html];

    /// The column the part is stored in (and the name errors use).
    pub fn column(self) -> &'static str {
        match self {
            Part::Subject => "subject",
            Part::Text => "body_text",
            Part::Html => "body_html",
        }
    }

    fn from_column(column: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|part| part.column() == column)
    }
}

/// A template's sources; a part that is `None` renders to `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateSource {
    pub subject: Option<String>,
    pub body_text: Option<String>,
    pub body_html: Option<String>,
}

impl TemplateSource {
    fn part(&self, part: Part) -> Option<&str> {
        match part {
            Part::Subject => self.subject.as_deref(),
            Part::Text => self.body_text.as_deref(),
            Part::Html => self.body_html.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub subject: Option<String>,
    pub body_text: Option<String>,
    pub body_html: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("syntax error in {part} at line {line}: {detail}")]
    Syntax { part: String, line: usize, detail: String },
    #[error("{part} uses the variable {name} at line {line}, which the context does not have")]
    MissingVariable { part: String, name: String, line: usize },
    #[error("{part} includes template {name:?}, which does not exist")]
    UnknownInclude { part: String, name: String },
    #[error("{part} cannot be rendered at line {line}: {detail}")]
    Render { part: String, line: usize, detail: String },
    #[error("the context must be a JSON object, not {0}")]
    Context(String),
}

/// Finds an included template's part: `Ok(Some(source))`, `Ok(None)` when
/// there is no such template (or it lacks the part), `Err` when it cannot be read.
pub type IncludeLoader = dyn Fn(&str, Part) -> Result<Option<String>, String> + Send + Sync;

/// Most instructions one render may run: a loop over a billion items stops
/// with an error instead of holding the caller's transaction.
const FUEL: u64 = 5_000_000;

/// Most bytes one part may render to (mail bigger than this is not mail).
pub const LONGEST_OUTPUT: usize = 10 * 1024 * 1024;

/// Deepest nesting of includes and macro calls.
const RECURSION_LIMIT: usize = 50;

/// The rendered text, refused past LONGEST_OUTPUT; `check` runs on every
/// write (the extension checks for query cancels there).
struct CappedOutput<'a> {
    text: Vec<u8>,
    check: &'a dyn Fn(),
}

impl std::io::Write for CappedOutput<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        (self.check)();
        if self.text.len() + bytes.len() > LONGEST_OUTPUT {
            return Err(std::io::Error::other(format!("the rendered text is longer than {LONGEST_OUTPUT} bytes")));
        }
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A compiled template, ready to render any number of times.
pub struct Compiled {
    environment: Environment<'static>,
    /// The parts there are, each with the variables it uses from the
    /// context (`order.total`; found once here: minijinja parses the source
    /// again to find them), to name the one missing when strict mode stops.
    parts: Vec<(Part, Vec<String>)>,
    missing_include: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Compiled").field("parts", &self.parts).finish_non_exhaustive()
    }
}

/// Template names inside the environment: `body_html` for the main
/// template's part, `<include>|body_html` for an included one's.
fn part_of(name: &str) -> Option<Part> {
    Part::from_column(name.rsplit('|').next().unwrap_or(name))
}

impl Compiled {
    /// Compiles `source` for mail in `language` (BCP 47; dates and numbers
    /// are formatted for it). Includes are loaded by `loader` when first rendered.
    pub fn new(
        source: &TemplateSource,
        language: Option<&str>,
        loader: Arc<IncludeLoader>,
    ) -> Result<Compiled, TemplateError> {
        let mut environment = Environment::new();
        environment.set_undefined_behavior(UndefinedBehavior::Strict);
        environment.set_keep_trailing_newline(true);
        environment.set_fuel(Some(FUEL));
        environment.set_recursion_limit(RECURSION_LIMIT);
        environment.set_auto_escape_callback(|name| match part_of(name) {
            Some(Part::Html) => AutoEscape::Html,
            _ => AutoEscape::None,
        });
        // `{% include 'footer' %}` in body_html is footer's body_html.
        environment.set_path_join_callback(|name, parent| {
            let part = part_of(parent).unwrap_or(Part::Text);
            format!("{name}|{}", part.column()).into()
        });
        // The template an include named and nobody has (minijinja's error says it only in words).
        let missing_include: Arc<Mutex<Option<String>>> = Arc::default();
        let missing = Arc::clone(&missing_include);
        environment.set_loader(move |name| {
            let Some((template, part)) =
                name.rsplit_once('|').and_then(|(template, part)| Some((template, Part::from_column(part)?)))
            else {
                return Ok(None);
            };
            let found = loader(template, part)
                .map_err(|error| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, error))?;
            if found.is_none() {
                if let Ok(mut missing) = missing.lock() {
                    *missing = Some(template.to_owned());
                }
            }
            Ok(found)
        });
        filters::add(&mut environment, language);
        // Builtins that turn a small number into a huge value in one step
        // (fuel counts steps, not bytes), and namespace(), which carries
        // values from one loop iteration to the next (a string doubled per
        // iteration). See README "Templates" for what is left.
        for filter in ["indent", "format", "slice", "batch"] {
            environment.remove_filter(filter);
        }
        environment.remove_global("namespace");
        let mut parts = Vec::new();
        for part in Part::ALL {
            if let Some(text) = source.part(part) {
                environment
                    .add_template_owned(part.column(), text.to_owned())
                    .map_err(|error| syntax_error(part.column(), &error))?;
                parts.push(part);
            }
        }
        let globals: Vec<String> = environment.globals().map(|(name, _)| name.to_owned()).collect();
        let parts = parts
            .into_iter()
            .map(|part| {
                let template = environment.get_template(part.column()).expect("added above");
                let mut used: Vec<String> = template
                    .undeclared_variables(true)
                    .into_iter()
                    .filter(|path| !globals.iter().any(|global| path.split('.').next() == Some(global)))
                    .collect();
                used.sort();
                (part, used)
            })
            .collect();
        Ok(Compiled { environment, parts, missing_include })
    }

    /// Renders every part over `context` (a JSON object); `check` is called
    /// as text is written (it may stop the render by unwinding).
    pub fn render(&self, context: &serde_json::Value, check: &dyn Fn()) -> Result<Rendered, TemplateError> {
        let Some(object) = context.as_object() else {
            return Err(TemplateError::Context(json_type(context).to_owned()));
        };
        let mut rendered = Rendered::default();
        for (part, used) in &self.parts {
            let template = self.environment.get_template(part.column()).expect("added at compile time");
            let mut output = CappedOutput { text: Vec::new(), check };
            let written = template.render_captured_to(context, &mut output).map(drop).map_err(|error| {
                // Strict mode says only "undefined value": name what the context lacks
                // (`x | default(…)` and `x is defined` are fine without it).
                let line = error.line().unwrap_or(1);
                let missing = missing_on_line(used, object, template.source(), line);
                match (error.kind(), missing) {
                    (minijinja::ErrorKind::UndefinedError, Some(path)) if error.name() == Some(part.column()) => {
                        TemplateError::MissingVariable { part: part.column().to_owned(), name: path.clone(), line }
                    }
                    // Our writer's only refusal.
                    (minijinja::ErrorKind::WriteFailure, _) => TemplateError::Render {
                        part: part.column().to_owned(),
                        line,
                        detail: format!("the rendered text is longer than {LONGEST_OUTPUT} bytes"),
                    },
                    _ => render_error(part.column(), &error, &self.missing_include),
                }
            });
            written?;
            let text = String::from_utf8_lossy(&output.text).into_owned();
            let text = if *part == Part::Subject { text.trim().replace(['\r', '\n'], " ") } else { text };
            match part {
                Part::Subject => rendered.subject = Some(text),
                Part::Text => rendered.body_text = Some(text),
                Part::Html => rendered.body_html = Some(text),
            }
        }
        Ok(rendered)
    }
}

/// Compiles `source` without rendering it: syntax errors, with their line.
pub fn check_syntax(source: &TemplateSource) -> Result<(), TemplateError> {
    Compiled::new(source, None, Arc::new(|_: &str, _: Part| Ok(None))).map(drop)
}

/// Of the paths the part uses that the context lacks, the one on the line
/// where rendering stopped (written there in full, else by its first name),
/// else the first.
fn missing_on_line<'a>(
    used: &'a [String],
    object: &serde_json::Map<String, serde_json::Value>,
    source: &str,
    line: usize,
) -> Option<&'a String> {
    let unresolved: Vec<&String> = used.iter().filter(|path| !resolves(object, path)).collect();
    let text = source.lines().nth(line.saturating_sub(1)).unwrap_or_default();
    let first_name = |path: &str| path.split('.').next().unwrap_or_default().to_owned();
    unresolved
        .iter()
        .find(|path| text.contains(path.as_str()))
        .or_else(|| unresolved.iter().find(|path| text.contains(&first_name(path))))
        .or(unresolved.first())
        .copied()
}

/// Whether a dotted path (`order.customer.name`) names a value of the context.
fn resolves(object: &serde_json::Map<String, serde_json::Value>, path: &str) -> bool {
    let mut names = path.split('.');
    let Some(mut value) = names.next().and_then(|name| object.get(name)) else {
        return false;
    };
    for name in names {
        match value.get(name) {
            Some(inner) => value = inner,
            None => return false,
        }
    }
    true
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Where an error happened: the template part (an included template's is
/// `<name>'s <part>`).
fn where_(default_part: &str, error: &minijinja::Error) -> String {
    match error.name().and_then(|name| name.split_once('|')) {
        Some((template, part)) => format!("{part} of included template {template:?}"),
        None => error.name().unwrap_or(default_part).to_owned(),
    }
}

fn detail(error: &minijinja::Error) -> String {
    error.detail().map(str::to_owned).unwrap_or_else(|| error.kind().to_string())
}

fn syntax_error(part: &str, error: &minijinja::Error) -> TemplateError {
    TemplateError::Syntax { part: where_(part, error), line: error.line().unwrap_or(1), detail: detail(error) }
}

fn render_error(part: &str, error: &minijinja::Error, missing_include: &Mutex<Option<String>>) -> TemplateError {
    match error.kind() {
        minijinja::ErrorKind::TemplateNotFound => {
            let name = missing_include.lock().ok().and_then(|mut missing| missing.take()).unwrap_or_default();
            TemplateError::UnknownInclude { part: where_(part, error), name }
        }
        minijinja::ErrorKind::SyntaxError => syntax_error(part, error),
        _ => {
            TemplateError::Render { part: where_(part, error), line: error.line().unwrap_or(1), detail: detail(error) }
        }
    }
}

#[cfg(test)]
mod tests;

//! The other templates a template names with a string literal in
//! `{% include %}`, `{% import %}`, `{% from … import %}` or `{% extends %}`,
//! so saving a template can refuse one that names a template that does not
//! exist. (A name computed at render time is found missing when rendered.)

/// The template names, in order of appearance, without repeats.
pub fn included_templates(source: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let block = &rest[start + 2..];
        let end = block.find("%}").unwrap_or(block.len());
        let inside = block[..end]
            .trim_matches(|character: char| character == '-' || character == '+' || character.is_whitespace());
        let keyword = inside.split_whitespace().next().unwrap_or_default();
        if matches!(keyword, "include" | "import" | "from" | "extends") {
            let argument = inside[keyword.len()..].trim_start();
            if let Some(name) = string_literal(argument) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        rest = &block[end.min(block.len())..];
    }
    names
}

/// The string literal `text` starts with ('…' or "…", no escapes).
fn string_literal(text: &str) -> Option<String> {
    let quote = text.chars().next().filter(|character| *character == '\'' || *character == '"')?;
    let body = &text[1..];
    Some(body[..body.find(quote)?].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_literal_names_only() {
        let source = "{% include 'header' %}{{ x }}{%- include \"footer\" ignore missing -%}\
                      {% from 'macros' import money %}{% import 'macros' as m %}{% include name %}\
                      {% if a %}{% include 'header' %}{% endif %}{% raw %}";
        assert_eq!(included_templates(source), vec!["header", "footer", "macros"]);
        assert!(included_templates("{% include").is_empty());
    }
}

//! The other templates a template names with a string literal in
//! `{% include %}`, `{% import %}`, `{% from … import %}` or `{% extends %}`,
//! so saving a template can refuse one that names a template that does not
//! exist. (A name computed at render time is found missing when rendered;
//! `ignore missing` includes, comments and `{% raw %}` text are skipped.)

/// The template names, in order of appearance, without repeats.
pub fn included_templates(source: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = source;
    let mut in_raw = false;
    while let Some(start) = rest.find('{') {
        // Inside {% raw %} only its {% endraw %} counts; expressions are
        // skipped whole (a string in one may hold "{#" or "{%").
        let closing = match rest.get(start..start + 2) {
            Some("{%") => "%}",
            Some("{#") if !in_raw => "#}",
            Some("{{") if !in_raw => "}}",
            _ => {
                rest = &rest[start + 1..];
                continue;
            }
        };
        let block = &rest[start + 2..];
        let end = block.find(closing).unwrap_or(block.len());
        rest = &block[end..];
        if closing != "%}" {
            continue;
        }
        let inside = block[..end].trim_matches(|character: char| "-+".contains(character) || character.is_whitespace());
        let keyword = inside.split_whitespace().next().unwrap_or_default();
        match keyword {
            "raw" => in_raw = true,
            "endraw" => in_raw = false,
            _ => {}
        }
        if in_raw || inside.contains("ignore missing") || !matches!(keyword, "include" | "import" | "from" | "extends")
        {
            continue;
        }
        if let Some(name) = string_literal(inside[keyword.len()..].trim_start()) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
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
        let source = "{% include 'header' %}{{ x }}{%- include \"footer\" -%}{% include 'extra' ignore missing %}\
                      {% from 'macros' import money %}{% import 'macros' as m %}{% include name %}\
                      {# {% include 'commented' %} #}{% if a %}{% include 'header' %}{% endif %}\
                      {% raw %}{% include 'raw' %}{% endraw %}{% include 'last' %}{% raw %}";
        assert_eq!(included_templates(source), vec!["header", "footer", "macros", "last"]);
        assert!(included_templates("{% include").is_empty());
        assert!(included_templates("{{ 'ü' }}{").is_empty());
        // What looks like a comment inside raw text or a string hides nothing.
        assert_eq!(included_templates("{% raw %}{# {% endraw %}{% include 'x' %}"), vec!["x"]);
        assert_eq!(included_templates("{{ \"{#\" }}{% include 'y' %}"), vec!["y"]);
    }
}

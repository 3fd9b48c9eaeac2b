use super::*;
use serde_json::json;

fn source(subject: &str, text: &str, html: &str) -> TemplateSource {
    TemplateSource {
        subject: Some(subject.to_owned()),
        body_text: Some(text.to_owned()),
        body_html: Some(html.to_owned()),
    }
}

fn no_includes() -> Arc<IncludeLoader> {
    Arc::new(|_: &str, _: Part| Ok(None))
}

#[test]
fn renders_escapes_only_html_and_formats_for_the_language() {
    let compiled = Compiled::new(
        &source(
            "Order {{ order.id }} shipped",
            "Hello {{ name }},\n{% for item in items %}- {{ item.title }}: {{ item.price | number }}\n{% endfor %}{{ note | default('no note') }}",
            "<p>Hello {{ name }}</p><p>{{ shipped_on | date }}</p>",
        ),
        Some("de"),
        no_includes(),
    )
    .unwrap();
    let rendered = compiled
        .render(
            &json!({
                "order": {"id": 7}, "name": "<script>alert(1)</script>", "shipped_on": "2026-12-02",
                "items": [{"title": "Tee", "price": 1234.5}, {"title": "Kaffee", "price": 3}]
            }),
            &|| {},
        )
        .unwrap();
    assert_eq!(rendered.subject.as_deref(), Some("Order 7 shipped"));
    assert_eq!(
        rendered.body_text.as_deref(),
        Some("Hello <script>alert(1)</script>,\n- Tee: 1.234,50\n- Kaffee: 3,00\nno note")
    );
    assert_eq!(
        rendered.body_html.as_deref(),
        Some("<p>Hello &lt;script&gt;alert(1)&lt;&#x2f;script&gt;</p><p>2. Dezember 2026</p>")
    );
}

#[test]
fn missing_variables_syntax_errors_and_includes_are_named() {
    let compiled = Compiled::new(&source("Hi {{ name }}", "{{ order.total }}", "x"), None, no_includes()).unwrap();
    let error = compiled.render(&json!({"name": "Ann", "order": {}}), &|| {}).unwrap_err();
    assert_eq!(error, TemplateError::MissingVariable { part: "body_text".into(), name: "order.total".into(), line: 1 });
    let error = compiled.render(&json!({}), &|| {}).unwrap_err();
    assert!(
        matches!(&error, TemplateError::MissingVariable { part, name, .. } if part == "subject" && name == "name"),
        "{error}"
    );
    // `is defined` and `default` are fine without the variable.
    let optional = Compiled::new(
        &source("{% if vip is defined %}VIP {% endif %}{{ nick | default('friend') }}", "", ""),
        None,
        no_includes(),
    )
    .unwrap();
    assert_eq!(optional.render(&json!({}), &|| {}).unwrap().subject.as_deref(), Some("friend"));

    let error = Compiled::new(&source("ok", "line one\n{% if %}", "x"), None, no_includes()).unwrap_err();
    assert!(matches!(&error, TemplateError::Syntax { part, line: 2, .. } if part == "body_text"), "{error}");
    assert!(check_syntax(&source("{{ unclosed", "", "")).is_err());

    // Includes take the same part of the included template; HTML stays escaped there.
    let loader: Arc<IncludeLoader> = Arc::new(|name: &str, part: Part| {
        Ok(match (name, part) {
            ("footer", Part::Html) => Some("<hr>{{ company }}".to_owned()),
            ("footer", Part::Text) => Some("-- {{ company }}".to_owned()),
            _ => None,
        })
    });
    let with_footer = Compiled::new(
        &source("s", "Body\n{% include 'footer' %}", "<p>Body</p>{% include 'footer' %}"),
        None,
        loader.clone(),
    )
    .unwrap();
    let rendered = with_footer.render(&json!({"company": "A & B"}), &|| {}).unwrap();
    assert_eq!(rendered.body_text.as_deref(), Some("Body\n-- A & B"));
    assert_eq!(rendered.body_html.as_deref(), Some("<p>Body</p><hr>A &amp; B"));
    let missing = Compiled::new(&source("s", "{% include 'nowhere' %}", "x"), None, loader).unwrap();
    assert_eq!(
        missing.render(&json!({}), &|| {}).unwrap_err(),
        TemplateError::UnknownInclude { part: "body_text".into(), name: "nowhere".into() }
    );
}

#[test]
fn runaway_loops_stop_and_subjects_stay_one_line() {
    // 10 million iterations (each under minijinja's range cap): fuel stops it.
    let nested = "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(10) %}{% endfor %}{% endfor %}{% endfor %}";
    let compiled = Compiled::new(&source("a\nb", nested, "x"), None, no_includes()).unwrap();
    let error = compiled.render(&json!({}), &|| {}).unwrap_err();
    assert!(matches!(&error, TemplateError::Render { detail, .. } if detail.contains("fuel")), "{error}");
    // Output past 10 MB stops, checking for cancels as it writes.
    let big = Compiled::new(
        &source("s", "{% for a in range(20) %}{{ 'x' * 1000000 }}{% endfor %}", "x"),
        None,
        no_includes(),
    )
    .unwrap();
    let writes = std::cell::Cell::new(0);
    let error = big.render(&json!({}), &|| writes.set(writes.get() + 1)).unwrap_err();
    assert!(error.to_string().contains("longer than"), "{error}");
    assert!(writes.get() > 5);
    // The builtins that make a huge value in one step are not there.
    for template in
        ["{{ 'x' | indent(1000000000) }}", "{% set ns = namespace(s='') %}", "{{ [1] | slice(1000000000) }}"]
    {
        let compiled = Compiled::new(&source("s", template, "x"), None, no_includes()).unwrap();
        assert!(compiled.render(&json!({}), &|| {}).is_err(), "{template}");
    }
    let subject_only = Compiled::new(
        &TemplateSource { subject: Some("  first\r\nsecond  ".into()), ..Default::default() },
        None,
        no_includes(),
    )
    .unwrap();
    let rendered = subject_only.render(&json!({}), &|| {}).unwrap();
    assert_eq!(
        (rendered.subject.as_deref(), rendered.body_text, rendered.body_html),
        (Some("first  second"), None, None)
    );
    assert_eq!(subject_only.render(&json!([1]), &|| {}).unwrap_err(), TemplateError::Context("an array".into()));
}

#[test]
fn the_missing_variable_named_is_the_one_on_the_failing_line() {
    let compiled =
        Compiled::new(&source("s", "Hello {{ name }}\n{% for item in items %}{% endfor %}", "x"), None, no_includes())
            .unwrap();
    let error = compiled.render(&json!({}), &|| {}).unwrap_err();
    assert_eq!(error, TemplateError::MissingVariable { part: "body_text".into(), name: "name".into(), line: 1 });
}

-- Email templates (issue 17): subject, text and HTML body in Jinja syntax,
-- one row per tenant, name and language, rendered when mail is queued (in
-- the caller's transaction) by send(template => …) or an INSERT INTO outbox
-- naming template, context and language. Rendering: src/api/templates.rs
-- and mail/src/template/.

CREATE TABLE email_accounts.template (
    template_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant       text,
    name         text NOT NULL
                 CONSTRAINT "template name must not be empty or contain | or control characters"
                 CHECK (name ~ '^[^|[:cntrl:]]+$' AND btrim(name) = name),
    language     text CONSTRAINT "language must be a BCP 47 tag such as pt-BR"
                 CHECK (language ~ '^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$'),
    subject      text CONSTRAINT "subject must be one line of at most 1000 bytes"
                 CHECK (subject !~ '[\r\n]' AND octet_length(subject) <= 1000),
    body_text    text CONSTRAINT "body_text must be at most 1 MB" CHECK (octet_length(body_text) <= 1048576),
    body_html    text CONSTRAINT "body_html must be at most 1 MB" CHECK (octet_length(body_html) <= 1048576),
    attachments  email_accounts.attachment[] NOT NULL DEFAULT '{}',
    account      text,
    description  text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "a template needs a subject, body_text or body_html"
        CHECK (subject IS NOT NULL OR body_text IS NOT NULL OR body_html IS NOT NULL)
);

CREATE UNIQUE INDEX "one template per tenant, name and language"
    ON email_accounts.template (tenant, name, lower(language)) NULLS NOT DISTINCT;
CREATE INDEX template_by_name ON email_accounts.template (name);

COMMENT ON TABLE email_accounts.template IS
  'Mail templates in Jinja syntax (minijinja): rendered over a JSON context when mail naming them is queued. One row per tenant, name and language; a tenant''s own template comes before the shared one (tenant NULL), and pt-BR falls back to pt, then to the row without language. email_accounts_admin manages the templates of its tenants, senders read them.';
COMMENT ON COLUMN email_accounts.template.template_id IS 'Surrogate key.';
COMMENT ON COLUMN email_accounts.template.tenant IS 'The tenant whose mail uses it; NULL: shared by every tenant (changed only by roles bound to every tenant).';
COMMENT ON COLUMN email_accounts.template.name IS 'What send(template => …) and {% include ''…'' %} name it by.';
COMMENT ON COLUMN email_accounts.template.language IS 'BCP 47 language tag (pt-BR, de); NULL: the default, used when no row of the wanted language or its base language exists. Dates and numbers are formatted for the language the mail asks for.';
COMMENT ON COLUMN email_accounts.template.subject IS 'The subject (one line after rendering).';
COMMENT ON COLUMN email_accounts.template.body_text IS 'The plain-text body; not escaped.';
COMMENT ON COLUMN email_accounts.template.body_html IS 'The HTML body; every {{ value }} is HTML-escaped (|safe to opt out).';
COMMENT ON COLUMN email_accounts.template.attachments IS 'Files attached to every mail made from it, before the mail''s own.';
COMMENT ON COLUMN email_accounts.template.account IS 'The account mail from it is sent through when the mail names none.';
COMMENT ON COLUMN email_accounts.template.description IS 'What the template is for.';
COMMENT ON COLUMN email_accounts.template.updated_at IS 'When the row last changed.';

-- Saving checks the syntax of every part and that the templates it includes
-- exist (for its tenant, or shared), raising 22023 with the part and line.
CREATE FUNCTION email_accounts.template_before_write() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text;
    included text;
    position integer;
BEGIN
    problem := email_accounts.template_problem(NEW.subject, NEW.body_text, NEW.body_html);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'template %: %', quote_literal(NEW.name), problem
            USING ERRCODE = 'invalid_parameter_value', SCHEMA = 'email_accounts', TABLE = 'template',
                  COLUMN = coalesce(substring(problem from '(subject|body_text|body_html)'), 'body_text');
    END IF;
    FOREACH included IN ARRAY email_accounts.included_template_names(NEW.subject, NEW.body_text, NEW.body_html) LOOP
        IF included = NEW.name THEN
            RAISE EXCEPTION 'template %: it includes itself', quote_literal(NEW.name)
                USING ERRCODE = 'invalid_parameter_value', SCHEMA = 'email_accounts', TABLE = 'template';
        END IF;
        IF NOT EXISTS (SELECT FROM email_accounts.template
                        WHERE template.name = included AND (template.tenant IS NULL OR template.tenant = NEW.tenant)) THEN
            RAISE EXCEPTION 'template %: it includes template %, which does not exist for its tenant', quote_literal(NEW.name), quote_literal(included)
                USING ERRCODE = 'invalid_parameter_value', SCHEMA = 'email_accounts', TABLE = 'template',
                      HINT = 'Create the included template first (a shared template may include only shared ones).';
        END IF;
    END LOOP;
    FOR position IN 1 .. coalesce(cardinality(NEW.attachments), 0) LOOP
        IF NEW.attachments[position].filename IS NULL OR btrim(NEW.attachments[position].filename) = ''
           OR NEW.attachments[position].filename ~ '[\r\n]' OR NEW.attachments[position].content IS NULL
           OR NEW.attachments[position].content_id ~ '[<>\r\n]' THEN
            RAISE EXCEPTION 'template %: attachment % needs a filename (one line) and content, and a content_id without <, > or line breaks', quote_literal(NEW.name), position
                USING ERRCODE = 'invalid_parameter_value', SCHEMA = 'email_accounts', TABLE = 'template', COLUMN = 'attachments';
        END IF;
    END LOOP;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.template_before_write() IS
  'Trigger: refuses a template whose parts do not compile or that includes a template its tenant does not have (22023, naming the part and line), and sets updated_at.';

CREATE TRIGGER check_template BEFORE INSERT OR UPDATE ON email_accounts.template
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.template_before_write();

-- The row a name stands for: the tenant's own before the shared one; the
-- wanted language, then its base languages (pt-BR, pt), then the row
-- without language. Runs as the caller: row-level security applies.
CREATE FUNCTION email_accounts.choose_template(wanted_tenant text, wanted_name text, wanted_language text)
RETURNS email_accounts.template
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT template.*
      FROM email_accounts.template
     WHERE template.name = wanted_name
       AND (template.tenant = wanted_tenant OR template.tenant IS NULL)
       AND (template.language IS NULL
            OR lower(wanted_language) = lower(template.language)
            OR lower(wanted_language) LIKE lower(template.language) || '-%')
     ORDER BY template.tenant IS NULL, template.language IS NULL, length(template.language) DESC
     LIMIT 1;
END;

COMMENT ON FUNCTION email_accounts.choose_template(text, text, text) IS
  'The template row wanted_name stands for, for wanted_tenant in wanted_language: the tenant''s own before the shared one, the language, then its base languages (pt-BR → pt), then the default (language NULL). All NULL when there is none. Runs as the caller.';

-- Fills a new outbox row from its template (called by outbox_before_insert):
-- subject, body_text and body_html the row leaves empty, the account it
-- names none of, and template_language.
CREATE FUNCTION email_accounts.apply_template(queued email_accounts.outbox) RETURNS email_accounts.outbox
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    chosen email_accounts.template;
    rendered record;
BEGIN
    chosen := email_accounts.choose_template(queued.tenant, queued.template, queued.language);
    IF chosen.template_id IS NULL THEN
        RAISE EXCEPTION 'template: there is no template % for tenant %', quote_literal(queued.template), coalesce(quote_literal(queued.tenant), '(none)')
            USING ERRCODE = 'invalid_parameter_value', SCHEMA = 'email_accounts', TABLE = 'outbox', COLUMN = 'template';
    END IF;
    SELECT * INTO rendered
      FROM email_accounts.render_chosen_template(chosen.template_id, coalesce(queued.context, '{}'), queued.language,
                                                 queued.tenant, queued.template);
    IF coalesce(queued.subject, '') = '' THEN
        queued.subject := coalesce(rendered.subject, '');
    END IF;
    queued.body_text := coalesce(queued.body_text, rendered.body_text);
    queued.body_html := coalesce(queued.body_html, rendered.body_html);
    queued.account := coalesce(queued.account, chosen.account);
    queued.template_id := chosen.template_id;
    queued.template_language := chosen.language;
    RETURN queued;
END;
$$;

COMMENT ON FUNCTION email_accounts.apply_template(email_accounts.outbox) IS
  'Renders the template a new outbox row names (choose_template(), then render_chosen_template()) into the parts the row leaves empty; raises 22023 naming the template, language, part, line and missing variable.';

-- Template attachments go first, positions 1…n (send() puts the mail's own after them).
CREATE FUNCTION email_accounts.attach_template_files() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO email_accounts.outbox_attachment (outbox_id, position, filename, content_type, content, content_id)
    SELECT NEW.outbox_id, file.position, file.filename, coalesce(file.content_type, 'application/octet-stream'), file.content,
           file.content_id
      FROM email_accounts.template,
           unnest(template.attachments) WITH ORDINALITY AS file (filename, content_type, content, content_id, position)
     WHERE template.template_id = NEW.template_id;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.attach_template_files() IS
  'Trigger: copies the attachments of the template a new outbox row was rendered from (positions 1…n), so a retry sends the same bytes.';

-- Previewing in psql.
CREATE FUNCTION email_accounts.render_template(name text, context jsonb DEFAULT '{}', language text DEFAULT NULL,
                                               tenant text DEFAULT NULL)
RETURNS TABLE (subject text, body_text text, body_html text, template_language text, template_tenant text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    chosen email_accounts.template;
    wanted_tenant text := email_accounts.queuing_tenant(render_template.tenant);
BEGIN
    chosen := email_accounts.choose_template(wanted_tenant, render_template.name, render_template.language);
    IF chosen.template_id IS NULL THEN
        RAISE EXCEPTION 'there is no template % for tenant %', quote_literal(render_template.name), coalesce(quote_literal(wanted_tenant), '(none)')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT rendered.subject, rendered.body_text, rendered.body_html, chosen.language, chosen.tenant
      FROM email_accounts.render_chosen_template(chosen.template_id, coalesce(render_template.context, '{}'),
                                                 render_template.language, wanted_tenant, render_template.name) AS rendered;
END;
$$;

COMMENT ON FUNCTION email_accounts.render_template(text, jsonb, text, text) IS
  'Renders a template as mail queued now would be (for previewing): subject, body_text, body_html, and which row was used (its language and tenant). tenant: for roles that see several (default: the caller''s only tenant). Runs as the caller.';

ALTER TABLE email_accounts.outbox
    ADD COLUMN template text,
    ADD COLUMN context jsonb,
    ADD COLUMN language text CONSTRAINT "outbox language must be a BCP 47 tag such as pt-BR"
                             CHECK (language ~ '^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$'),
    ADD COLUMN template_language text,
    ADD COLUMN template_id bigint;

COMMENT ON COLUMN email_accounts.outbox.template IS 'The template the mail was made from (set on insert: subject and bodies the row leaves empty are rendered from it, and kept, so a retry sends the same text).';
COMMENT ON COLUMN email_accounts.outbox.context IS 'The JSON object the template was rendered over.';
COMMENT ON COLUMN email_accounts.outbox.language IS 'The language the mail was asked for in (BCP 47): picks the template row and formats dates and numbers.';
COMMENT ON COLUMN email_accounts.outbox.template_language IS 'The language of the template row used (NULL: its default row).';
COMMENT ON COLUMN email_accounts.outbox.template_id IS 'The template row used (set on insert; the row may since have changed or gone).';

CREATE TRIGGER attach_template_files AFTER INSERT ON email_accounts.outbox
    FOR EACH ROW WHEN (NEW.template_id IS NOT NULL AND NOT email_accounts.restoring())
    EXECUTE FUNCTION email_accounts.attach_template_files();

ALTER TABLE email_accounts.template ENABLE ROW LEVEL SECURITY;
-- Shared templates: for roles bound to some tenant (a role bound to none sees nothing).
CREATE POLICY readable ON email_accounts.template FOR SELECT
    USING (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants()))
           OR (tenant IS NULL AND cardinality((SELECT email_accounts.current_tenants())) > 0));
CREATE POLICY tenant_rows ON email_accounts.template
    USING (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())))
    WITH CHECK (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())));
GRANT SELECT ON email_accounts.template TO email_accounts_sender, email_accounts_admin;
GRANT INSERT, UPDATE, DELETE ON email_accounts.template TO email_accounts_admin;
REVOKE EXECUTE ON FUNCTION email_accounts.render_chosen_template(bigint, jsonb, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION email_accounts.render_chosen_template(bigint, jsonb, text, text, text)
    TO email_accounts_sender, email_accounts_admin;
-- Compiling is for saving templates (the trigger runs as the one saving).
REVOKE EXECUTE ON FUNCTION email_accounts.template_problem(text, text, text),
                          email_accounts.included_template_names(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION email_accounts.template_problem(text, text, text),
                          email_accounts.included_template_names(text, text, text) TO email_accounts_admin;
REVOKE EXECUTE ON FUNCTION email_accounts.render_template(text, jsonb, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION email_accounts.render_template(text, jsonb, text, text) TO email_accounts_sender, email_accounts_admin;

SELECT pg_catalog.pg_extension_config_dump('email_accounts.template', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.template_template_id_seq', '');

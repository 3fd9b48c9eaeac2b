-- Templates (sql/templates.sql): a shared footer, a tenant's template in two
-- languages including it (with an attachment), and mail queued from it.
INSERT INTO email_accounts.template (tenant, name, body_text, body_html)
VALUES (NULL, 'footer', E'\n-- {{ company }}', '<hr>{{ company }}');
INSERT INTO email_accounts.template (tenant, name, language, subject, body_text, attachments, description) VALUES
  ('acme', 'receipt', NULL, 'Receipt {{ number }}', E'Thank you.{% include ''footer'' %}',
   ARRAY[ROW('terms.txt', 'text/plain', 'Terms'::bytea, NULL)::email_accounts.attachment], 'receipts'),
  ('acme', 'receipt', 'de', 'Beleg {{ number }}', E'Danke.{% include ''footer'' %}', '{}', NULL);
SELECT email_accounts.send("to" => ARRAY['ann@example.com'], template => 'receipt',
                           context => '{"number": 17, "company": "Acme"}', language => 'de-CH', tenant => 'acme');

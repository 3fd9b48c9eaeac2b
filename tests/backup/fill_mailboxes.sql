-- Who can read a mailbox, and SMTP credentials of their own (issue 19): a
-- private and a shared mailbox with mail, and an SMTP side with a login and
-- a password of its own.
DO $$ BEGIN CREATE ROLE backup_sales; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
INSERT INTO email_accounts.account (name, tenant, address, enable_outgoing, visibility, shared_with, smtp_login_id)
VALUES ('Private', 'acme', 'private@example.test', true, 'private', '{}', NULL),
       ('Sales', 'acme', 'sales@example.test', true, 'shared', '{backup_sales}', 'relay@example.test');
SELECT email_accounts.set_password('Private', 'secret of Private', 'acme');
SELECT email_accounts.set_password('Sales', 'incoming secret of Sales', 'acme', side => 'incoming');
SELECT email_accounts.set_password('Sales', 'relay secret of Sales', 'acme', side => 'smtp');
SELECT email_accounts.send("to" => ARRAY['ann@example.test'], subject => 'private mail', body_text => 'x',
                           account => 'Private', tenant => 'acme');

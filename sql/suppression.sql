-- Unsubscribes and open tracking: links in outgoing mail carry signed
-- tokens; the application serving those links calls unsubscribe() or
-- mark_opened() with the token.

CREATE TABLE email_accounts.suppression (
    suppression_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant         text,
    address        text NOT NULL CONSTRAINT "address must be a valid email address" CHECK (email_accounts.is_valid_address(address)),
    reason         text NOT NULL DEFAULT 'unsubscribed',
    outbox_id      bigint REFERENCES email_accounts.outbox (outbox_id) ON DELETE SET NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX "one suppression per tenant and address"
    ON email_accounts.suppression (tenant, lower(address)) NULLS NOT DISTINCT;

COMMENT ON TABLE email_accounts.suppression IS
  'Addresses that must not receive mail from a tenant (unsubscribed, or added by hand). The sender marks such recipients suppressed and never sends to them.';
COMMENT ON COLUMN email_accounts.suppression.suppression_id IS 'Surrogate key.';
COMMENT ON COLUMN email_accounts.suppression.tenant IS 'The tenant whose mail the address no longer receives; NULL for mail without tenant.';
COMMENT ON COLUMN email_accounts.suppression.address IS 'The bare address.';
COMMENT ON COLUMN email_accounts.suppression.reason IS 'Why: unsubscribed (by a link or List-Unsubscribe), or whatever a person entered.';
COMMENT ON COLUMN email_accounts.suppression.outbox_id IS 'The message whose unsubscribe link was used, if any.';
COMMENT ON COLUMN email_accounts.suppression.created_at IS 'When the address was added.';

CREATE TABLE email_accounts.link_signing_key (
    singleton  boolean PRIMARY KEY DEFAULT true CONSTRAINT "there is one link signing key" CHECK (singleton),
    key        bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE email_accounts.link_signing_key IS
  'The HMAC key that signs unsubscribe and open-tracking tokens. Readable by no role; kept by pg_dump so links in mail already sent stay valid.';
COMMENT ON COLUMN email_accounts.link_signing_key.singleton IS 'Always true: there is one key.';
COMMENT ON COLUMN email_accounts.link_signing_key.key IS '32 random bytes.';
COMMENT ON COLUMN email_accounts.link_signing_key.created_at IS 'When the key was made.';

INSERT INTO email_accounts.link_signing_key (key) VALUES (email_accounts.random_bytes(32));
REVOKE ALL ON email_accounts.link_signing_key FROM PUBLIC;
ALTER TABLE email_accounts.link_signing_key ENABLE ROW LEVEL SECURITY;

ALTER TABLE email_accounts.outbox ADD COLUMN opened_at timestamptz, ADD COLUMN open_count integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN email_accounts.outbox.opened_at IS 'When a recipient first displayed the message (open tracking; images must be loaded).';
COMMENT ON COLUMN email_accounts.outbox.open_count IS 'How many times the tracking image was fetched.';

-- A suppression names a message of its own tenant only (foreign keys ignore
-- row-level security). Runs as the caller.
CREATE FUNCTION email_accounts.suppression_before_write() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.outbox_id IS NOT NULL AND NOT EXISTS (
        SELECT FROM email_accounts.outbox WHERE outbox.outbox_id = NEW.outbox_id AND outbox.tenant IS NOT DISTINCT FROM NEW.tenant) THEN
        RAISE EXCEPTION 'outbox_id: no outbox row % of this tenant', NEW.outbox_id
            USING ERRCODE = 'foreign_key_violation', SCHEMA = 'email_accounts', TABLE = 'suppression', COLUMN = 'outbox_id';
    END IF;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.suppression_before_write() IS
  'Trigger: a suppression''s outbox_id must be a message of the same tenant that the caller can see (SQLSTATE 23503).';

CREATE TRIGGER check_outbox BEFORE INSERT OR UPDATE ON email_accounts.suppression
    FOR EACH ROW EXECUTE FUNCTION email_accounts.suppression_before_write();

SELECT pg_catalog.pg_extension_config_dump('email_accounts.suppression', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.link_signing_key', '');

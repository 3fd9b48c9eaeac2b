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
-- Deleting outbox rows sets outbox_id to NULL here: without it, each deleted row read every suppression.
CREATE INDEX suppression_outbox ON email_accounts.suppression (outbox_id) WHERE outbox_id IS NOT NULL;

COMMENT ON TABLE email_accounts.suppression IS
  'Addresses that must not receive mail from a tenant (unsubscribed, or added by hand). The sender marks such recipients suppressed and never sends to them.';
COMMENT ON COLUMN email_accounts.suppression.suppression_id IS 'Surrogate key.';
COMMENT ON COLUMN email_accounts.suppression.tenant IS 'The tenant whose mail the address no longer receives; NULL for mail without tenant.';
COMMENT ON COLUMN email_accounts.suppression.address IS 'The bare address.';
COMMENT ON COLUMN email_accounts.suppression.reason IS 'Why: unsubscribed (by a link or List-Unsubscribe), or whatever a person entered.';
COMMENT ON COLUMN email_accounts.suppression.outbox_id IS 'The message whose unsubscribe link was used, if any.';
COMMENT ON COLUMN email_accounts.suppression.created_at IS 'When the address was added.';

-- (key_id comes last: 0.1.0's table had one key and no key_id, and an
-- upgraded table must look exactly like a new one.)
CREATE TABLE email_accounts.link_signing_key (
    key        bytea NOT NULL CONSTRAINT "key must be 32 bytes" CHECK (octet_length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    key_id     integer PRIMARY KEY CONSTRAINT "key_id must be positive" CHECK (key_id > 0)
);

COMMENT ON TABLE email_accounts.link_signing_key IS
  'The keys of unsubscribe and open-tracking links: the newest makes new links, every kept one still opens its links until they expire. The sender makes key 1 when it first needs one; rotate_link_signing_key() adds the next and drops those whose links have all expired. Readable by no role; kept by pg_dump so links in mail already sent stay valid.';
COMMENT ON COLUMN email_accounts.link_signing_key.key_id IS 'The key''s number, named in every link it made.';
COMMENT ON COLUMN email_accounts.link_signing_key.key IS '32 random bytes.';
COMMENT ON COLUMN email_accounts.link_signing_key.created_at IS 'When the key was made; it made new links until the next one was.';

REVOKE ALL ON email_accounts.link_signing_key FROM PUBLIC;
ALTER TABLE email_accounts.link_signing_key ENABLE ROW LEVEL SECURITY;

-- Links carry the key id and their expiry, so keys can change while links
-- in mail already sent keep working until they expire.
CREATE FUNCTION email_accounts.rotate_link_signing_key() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lifetime interval := coalesce(nullif(current_setting('email_accounts.link_token_lifetime', true), ''), '365 days')::interval;
    new_key integer;
BEGIN
    LOCK TABLE email_accounts.link_signing_key IN EXCLUSIVE MODE;
    INSERT INTO email_accounts.link_signing_key (key_id, key)
    SELECT coalesce(max(key_id), 0) + 1, email_accounts.random_bytes(32) FROM email_accounts.link_signing_key
    RETURNING key_id INTO new_key;
    -- A key stopped making links when the next one was made; once that is
    -- longer ago than the links' lifetime, none of its links is valid.
    DELETE FROM email_accounts.link_signing_key AS retired
     WHERE EXISTS (SELECT FROM email_accounts.link_signing_key AS newer
                    WHERE newer.key_id > retired.key_id AND newer.created_at < now() - lifetime);
    RETURN new_key;
END;
$$;

COMMENT ON FUNCTION email_accounts.rotate_link_signing_key() IS
  'Superusers: makes a new key current for unsubscribe and tracking links (links already sent keep working until they expire, email_accounts.link_token_lifetime) and drops keys all of whose links have expired. Returns the new key id.';

REVOKE EXECUTE ON FUNCTION email_accounts.rotate_link_signing_key() FROM PUBLIC;

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
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.suppression_before_write();

SELECT pg_catalog.pg_extension_config_dump('email_accounts.suppression', '');
-- Identity sequences are dumped only when named: a restored database hands out fresh ids.
SELECT pg_catalog.pg_extension_config_dump('email_accounts.suppression_suppression_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.link_signing_key', '');

-- Account passwords, encrypted (AES-256-GCM) with a key kept outside the
-- tables, in the file email_accounts.keys of the data directory. Written only
-- by set_password(); no role is granted anything on this table.

CREATE TABLE email_accounts.account_secret (
    account_id bigint NOT NULL REFERENCES email_accounts.account (account_id) ON DELETE CASCADE,
    key_id     integer NOT NULL,
    nonce      bytea NOT NULL,
    ciphertext bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    bound_servers text NOT NULL,
    side       text NOT NULL DEFAULT 'incoming' CONSTRAINT "side must be incoming or smtp" CHECK (side IN ('incoming', 'smtp')),
    PRIMARY KEY (account_id, side)
);

COMMENT ON TABLE email_accounts.account_secret IS
  'Encrypted account passwords, one per side (incoming, smtp). Readable by no role but superusers (and useless without the key file email_accounts.keys in the data directory). Written only by set_password() and rotate_encryption_key().';
COMMENT ON COLUMN email_accounts.account_secret.account_id IS 'The account whose password this is; the id is also bound into the encryption, so a copied row does not decrypt for another account.';
COMMENT ON COLUMN email_accounts.account_secret.key_id IS 'Which key of the key file encrypted it.';
COMMENT ON COLUMN email_accounts.account_secret.nonce IS 'The random 96-bit nonce of this encryption.';
COMMENT ON COLUMN email_accounts.account_secret.ciphertext IS 'The encrypted password with its authentication tag.';
COMMENT ON COLUMN email_accounts.account_secret.bound_servers IS 'server_binding() of the account when the password was stored: the password is only sent while the account''s servers still match it.';
COMMENT ON COLUMN email_accounts.account_secret.side IS 'Which side signs in with it: incoming (IMAP or POP3, and the Sent folder copy) or smtp. set_password(side => both) writes one row of each.';
COMMENT ON COLUMN email_accounts.account_secret.updated_at IS 'When the password was last written or re-encrypted.';

REVOKE ALL ON email_accounts.account_secret FROM PUBLIC;
ALTER TABLE email_accounts.account_secret ENABLE ROW LEVEL SECURITY;
-- No policy: even a role granted privileges by mistake sees no rows.

SELECT pg_catalog.pg_extension_config_dump('email_accounts.account_secret', '');

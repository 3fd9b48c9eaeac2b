//! Real mail servers on 127.0.0.1: Dovecot (IMAP, IMAPS, POP3, POP3S, LMTP)
//! and a private Postfix (SMTP with STARTTLS, SMTPS) delivering into Dovecot.

use super::token_service::TokenService;
use super::{free_ports, run_directory, run_script};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

/// A mailbox of `scripts/services/mail-users.txt`.
#[derive(Debug, Clone)]
pub struct MailUser {
    pub address: String,
    pub password: String,
    /// The login name when it differs from the address.
    pub login: Option<String>,
}

pub struct MailServers {
    pub imap: u16,
    pub imaps: u16,
    pub pop3: u16,
    pub pop3s: u16,
    pub lmtp: u16,
    pub smtp: u16,
    pub smtps: u16,
    pub users: Vec<MailUser>,
    /// Issues access tokens Dovecot and Postfix accept (see `start_with_oauth2`).
    pub token_service: Option<TokenService>,
    root: tempfile::TempDir,
}

impl MailServers {
    pub fn start() -> MailServers {
        MailServers::start_servers(false)
    }

    /// The servers, also accepting OAuth2 access tokens (XOAUTH2 and
    /// OAUTHBEARER) that `token_service` issues, through Dovecot's oauth2 passdb.
    pub fn start_with_oauth2() -> MailServers {
        MailServers::start_servers(true)
    }

    fn start_servers(oauth2: bool) -> MailServers {
        let root = run_directory("mail");
        let [imap, imaps, pop3, pop3s, lmtp, smtp, smtps] = free_ports();
        let certificates = text(&root.path().join("certificates"));
        let postfix = text(&root.path().join("postfix"));
        run_script("certificates.sh", &[&certificates]);
        let token_service = oauth2.then(|| {
            let read = |name: &str| std::fs::read(root.path().join("certificates").join(name)).expect(name);
            TokenService::start(&read("server.pem"), &read("server.key"))
        });
        let servers =
            MailServers { imap, imaps, pop3, pop3s, lmtp, smtp, smtps, users: read_users(), token_service, root };
        servers.start_dovecot();
        let dovecot = text(&servers.root.path().join("dovecot"));
        run_script("postfix.sh", &["start", &postfix, &certificates, &dovecot, &p(smtp), &p(smtps), &p(lmtp)]);
        servers
    }

    fn start_dovecot(&self) {
        let dovecot = text(&self.root.path().join("dovecot"));
        let certificates = text(&self.root.path().join("certificates"));
        let mut arguments = vec![
            "start".to_owned(),
            dovecot,
            certificates,
            p(self.imap),
            p(self.imaps),
            p(self.pop3),
            p(self.pop3s),
            p(self.lmtp),
        ];
        arguments.extend(self.token_service.as_ref().map(TokenService::introspection_url));
        run_script("dovecot.sh", &arguments.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Stops Dovecot and starts it again on the same ports with the same
    /// mail (every open IMAP/POP3 connection is dropped).
    pub fn restart_dovecot(&self) {
        let dovecot = text(&self.root.path().join("dovecot"));
        run_script("dovecot.sh", &["stop", &dovecot]);
        self.start_dovecot();
    }

    /// The CA that signed the servers' certificate (PEM).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_path()).expect("CA certificate")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.root.path().join("certificates/ca.pem")
    }

    pub fn user(&self, address: &str) -> &MailUser {
        self.users
            .iter()
            .find(|user| user.address == address)
            .unwrap_or_else(|| panic!("{address} is not in mail-users.txt"))
    }

    /// A TLS connector that trusts the per-run CA.
    pub fn tls_connector(&self) -> native_tls::TlsConnector {
        let ca = native_tls::Certificate::from_pem(self.ca_pem().as_bytes()).expect("CA certificate");
        native_tls::TlsConnector::builder().add_root_certificate(ca).build().expect("TLS connector")
    }

    /// A logged-in IMAPS session of one of the mailboxes.
    pub fn imap_session(&self, address: &str) -> imap::Session<native_tls::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(("127.0.0.1", self.imaps)).expect("IMAPS port");
        let mut client = imap::Client::new(self.tls_connector().connect("localhost", tcp).expect("TLS handshake"));
        client.read_greeting().expect("IMAP greeting");
        let user = self.user(address);
        client.login(&user.address, &user.password).map_err(|(error, _)| error).expect("IMAP login")
    }

    /// Every message in a mailbox's INBOX, raw, read without changing \Seen.
    pub fn mailbox(&self, address: &str) -> Vec<String> {
        let mut session = self.imap_session(address);
        let exists = session.examine("INBOX").expect("EXAMINE INBOX").exists;
        let messages = if exists == 0 {
            Vec::new()
        } else {
            session
                .fetch("1:*", "BODY.PEEK[]")
                .expect("FETCH")
                .iter()
                .map(|fetch| String::from_utf8_lossy(fetch.body().unwrap_or_default()).into_owned())
                .collect()
        };
        session.logout().expect("LOGOUT");
        messages
    }

    /// Adds the domain example.test pointing at these servers (IMAPS for
    /// incoming, SMTP with STARTTLS for outgoing, the run's CA trusted).
    /// A cluster whose workers are only woken (no polling, no IDLE), the
    /// extension created and example.test pointing at these servers.
    pub fn quiet_cluster(&self) -> (super::Postgres, postgres::Client) {
        let cluster =
            super::Postgres::start(&["email_accounts.fallback_poll_interval = '1h'", "email_accounts.imap_idle = off"]);
        let mut client = cluster.connect("postgres");
        client.batch_execute("CREATE EXTENSION email_accounts").expect("CREATE EXTENSION");
        self.add_example_domain(&mut client);
        (cluster, client)
    }

    pub fn add_example_domain(&self, client: &mut postgres::Client) {
        client
            .execute(
                &format!(
                    "INSERT INTO email_accounts.domain (domain_name, incoming_protocol, incoming_host, incoming_port,
                         incoming_security, smtp_host, smtp_port, smtp_security, extra_ca_certificate)
                     VALUES ('example.test', 'imap', 'localhost', {}, 'ssl', 'localhost', {}, 'starttls', $1)",
                    self.imaps, self.smtp
                ),
                &[&self.ca_pem()],
            )
            .expect("INSERT INTO email_accounts.domain");
    }

    /// Appends raw messages to a folder of a mailbox (created if missing),
    /// with \Seen where asked; returns the UIDs the server gave them.
    pub fn append(&self, address: &str, folder: &str, messages: &[(Vec<u8>, bool)]) {
        let mut session = self.imap_session(address);
        let _ = session.create(folder);
        for (raw, seen) in messages {
            let mut command = session.append(folder, raw);
            if *seen {
                command.flag(imap::types::Flag::Seen);
            }
            command.finish().expect("APPEND");
        }
        session.logout().expect("LOGOUT");
    }

    /// (UID, \Seen) of every message in a folder, read without changing anything.
    pub fn folder_flags(&self, address: &str, folder: &str) -> Vec<(u32, bool)> {
        let mut session = self.imap_session(address);
        let exists = session.examine(folder).expect("EXAMINE").exists;
        let mut flags = Vec::new();
        if exists > 0 {
            for fetch in session.fetch("1:*", "(UID FLAGS)").expect("FETCH").iter() {
                let seen = fetch.flags().contains(&imap::types::Flag::Seen);
                flags.push((fetch.uid.unwrap_or(0), seen));
            }
        }
        session.logout().expect("LOGOUT");
        flags.sort();
        flags
    }

    /// Deletes a folder and creates it again: the server gives it a new UIDVALIDITY.
    pub fn recreate_folder(&self, address: &str, folder: &str) {
        let mut session = self.imap_session(address);
        session.delete(folder).expect("DELETE");
        session.create(folder).expect("CREATE");
        session.logout().expect("LOGOUT");
    }

    /// Makes Postfix answer RCPT TO for `address` with `reply` (e.g. "450 4.2.0
    /// try later"), or accept it again with `None`.
    pub fn set_recipient_reply(&self, address: &str, reply: Option<&str>) {
        let postfix = self.root.path().join("postfix");
        let path = postfix.join("recipient_answers");
        let mut lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.split_whitespace().next() != Some(address))
            .map(str::to_owned)
            .collect();
        if let Some(reply) = reply {
            lines.push(format!("{address} {reply}"));
        }
        std::fs::write(&path, lines.join("\n") + "\n").expect("recipient_answers");
        run_script("postfix.sh", &["reload", &text(&postfix)]);
        // A reload reaches smtpd processes gracefully: one already waiting may
        // still answer with the old table. Ask until Postfix answers as told.
        let expected = reply.map(|reply| reply[..3].to_owned()).unwrap_or_else(|| "250".to_owned());
        super::wait_until(
            &format!("Postfix to answer {address} with {expected}"),
            std::time::Duration::from_secs(60),
            || (self.recipient_reply_code(address).as_deref() == Some(expected.as_str())).then_some(()),
        );
    }

    /// Sets main.cf parameters of the running Postfix (`name=value`) and
    /// reloads it; the queue manager takes them for its next queue run.
    pub fn set_postfix(&self, parameters: &[&str]) {
        let postfix = text(&self.root.path().join("postfix"));
        let mut arguments = vec!["set", postfix.as_str()];
        arguments.extend_from_slice(parameters);
        run_script("postfix.sh", &arguments);
    }

    /// The code Postfix answers RCPT TO:<address> with, in a session that sends nothing.
    fn recipient_reply_code(&self, address: &str) -> Option<String> {
        use std::io::{BufRead, BufReader, Write};
        let stream = TcpStream::connect(("127.0.0.1", self.smtp)).ok()?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut writer = stream;
        // The last line of a (multi-line) reply.
        let reply = |reader: &mut BufReader<TcpStream>| -> Option<String> {
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).ok()? == 0 {
                    return None;
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Some(line);
                }
            }
        };
        reply(&mut reader)?;
        for command in ["EHLO probe.example.test", "MAIL FROM:<probe@example.test>"] {
            writer.write_all(format!("{command}\r\n").as_bytes()).ok()?;
            reply(&mut reader)?;
        }
        writer.write_all(format!("RCPT TO:<{address}>\r\n").as_bytes()).ok()?;
        let answer = reply(&mut reader)?;
        let _ = writer.write_all(b"QUIT\r\n");
        Some(answer.chars().take(3).collect())
    }

    /// Postfix's log: one line per accepted, delivered or rejected message.
    pub fn smtp_log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("postfix/maillog")).unwrap_or_default()
    }

    pub fn directory(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for MailServers {
    fn drop(&mut self) {
        let postfix = text(&self.root.path().join("postfix"));
        let dovecot = text(&self.root.path().join("dovecot"));
        let _ = std::process::Command::new("bash").arg(super::script("postfix.sh")).args(["stop", &postfix]).output();
        let _ = std::process::Command::new("bash").arg(super::script("dovecot.sh")).args(["stop", &dovecot]).output();
    }
}

fn read_users() -> Vec<MailUser> {
    let list = std::fs::read_to_string(super::script("mail-users.txt")).expect("mail-users.txt");
    list.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some(MailUser {
                address: fields.next()?.to_owned(),
                password: fields.next()?.to_owned(),
                login: fields.next().map(str::to_owned),
            })
        })
        .collect()
}

fn p(port: u16) -> String {
    port.to_string()
}

fn text(path: &Path) -> String {
    path.to_str().expect("temp paths are UTF-8").to_owned()
}

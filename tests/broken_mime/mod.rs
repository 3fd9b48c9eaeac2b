//! A corpus of odd and broken MIME messages, generated here so the kinds are
//! readable: wrong and unknown charsets, 8-bit and broken encoded-word
//! headers, missing or wrong boundaries, 1,000-deep nesting, 10 MB headers,
//! NUL bytes, bad transfer encodings, bare LF or CR line ends, and duplicate
//! Message-IDs. Every one must be stored; none may stop the receiver.

/// (what it tests, raw message).
pub fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut corpus: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, raw: Vec<u8>| corpus.push((name.to_owned(), raw));

    // Charsets: unknown, wrong for the bytes, empty, and 8-bit text without one.
    for charset in ["x-unknown-charset", "utf-8", "utf-7", "iso-2022-jp", "koi8-r", "gb2312", "\"\"", "utf-16"] {
        add(
            &format!("charset {charset}"),
            [
                format!("Subject: charset {charset}\r\nContent-Type: text/plain; charset={charset}\r\n\r\n").as_bytes(),
                b"bytes \xff\xfe\x80\x1b$B\xc3\x28 end\r\n",
            ]
            .concat(),
        );
    }
    add(
        "html in windows-1252 declared utf-8",
        b"Subject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>caf\xe9 \x93quoted\x94</p>\r\n".to_vec(),
    );

    // Headers: raw 8-bit, broken encoded-words, odd names and folding.
    add("utf-8 raw header", "Subject: Grüße aus Köln\r\nFrom: Jürgen <j@example.test>\r\n\r\nbody\r\n".into());
    add("latin-1 raw header", b"Subject: caf\xe9 cr\xe8me\r\n\r\nbody\r\n".to_vec());
    add("encoded-word bad base64", b"Subject: =?utf-8?B?!!!not base64!!!?=\r\n\r\nbody\r\n".to_vec());
    add("encoded-word unknown charset", b"Subject: =?x-klingon?Q?qapla=27?=\r\n\r\nbody\r\n".to_vec());
    add("encoded-word unterminated", b"Subject: =?utf-8?Q?never=20ends\r\n\r\nbody\r\n".to_vec());
    add("header without value", b"Subject:\r\nFrom:\r\nTo:\r\n\r\nbody\r\n".to_vec());
    add("folded forever", ["Subject: start\r\n", &" more\r\n".repeat(20_000), "\r\nbody\r\n"].concat().into());
    add(
        "many headers",
        [&"X-Filler: value\r\n".repeat(50_000), "Subject: many headers\r\n\r\nbody\r\n"].concat().into(),
    );
    add(
        "10 MB single-line header",
        ["Subject: ", &"S".repeat(10 * 1024 * 1024), "\r\nFrom: big@example.test\r\n\r\nbody\r\n"].concat().into(),
    );
    add(
        "10 MB references",
        ["References: ", &"<r@example.test> ".repeat(600_000), "\r\nSubject: refs\r\n\r\nbody\r\n"].concat().into(),
    );
    add("garbage date", b"Date: the day after tomorrow\r\nSubject: date\r\n\r\nbody\r\n".to_vec());
    add("address soup", b"From: <<@@>>, \"unterminated\r\nTo: a@, @b, ;;, Group: ;\r\n\r\nbody\r\n".to_vec());
    add("a thousand recipients", ["To: ", &"x@example.test, ".repeat(1000), "\r\n\r\nbody\r\n"].concat().into());

    // Multipart structure.
    add("no boundary parameter", b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\npart\r\n--x--\r\n".to_vec());
    add(
        "boundary never used",
        b"Content-Type: multipart/mixed; boundary=\"absent\"\r\n\r\njust text, no parts\r\n".to_vec(),
    );
    add(
        "closing boundary missing",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nfirst\r\n--b\r\n\r\nsecond, never closed\r\n"
            .to_vec(),
    );
    add("empty boundary", b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n\r\npart\r\n----\r\n".to_vec());
    add(
        "nested parts reuse the boundary",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\r\ninner\r\n--b--\r\n--b--\r\n"
            .to_vec(),
    );
    add("multipart with no parts", b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b--\r\n".to_vec());
    add("content type without slash", b"Content-Type: text\r\n\r\nbody\r\n".to_vec());
    add("content type garbage", b"Content-Type: ;;;=\"\r\n\r\nbody\r\n".to_vec());

    // Depth: 1,000 message/rfc822 layers and 1,000 multipart layers.
    let mut nested = "Subject: innermost\r\n\r\nbottom\r\n".to_owned();
    for level in (0..1000).rev() {
        nested = format!("Subject: level {level}\r\nContent-Type: message/rfc822\r\n\r\n{nested}");
    }
    add("1,000 nested messages", nested.into_bytes());
    let mut open = String::new();
    let mut close = String::new();
    for level in 0..1000 {
        open.push_str(&format!("Content-Type: multipart/mixed; boundary=\"l{level}\"\r\n\r\n--l{level}\r\n"));
        close = format!("\r\n--l{level}--\r\n{close}");
    }
    add("1,000 nested multiparts", format!("Subject: deep multipart\r\n{open}\r\ncore{close}").into_bytes());

    // Transfer encodings.
    add(
        "base64 with garbage",
        b"Content-Transfer-Encoding: base64\r\nSubject: b64\r\n\r\n!!!! %%%% ====\r\nSGVsbG8=garbage\r\n".to_vec(),
    );
    add(
        "quoted-printable broken",
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ =4 =\r\nsoft=\r\n".to_vec(),
    );
    add("unknown transfer encoding", b"Content-Transfer-Encoding: x-rot13\r\n\r\nobql\r\n".to_vec());
    add("1 MB line body", ["Subject: long line\r\n\r\n", &"L".repeat(1024 * 1024)].concat().into());

    // NUL bytes and control characters.
    add("nul in header", b"Subject: nul\x00inside\r\nFrom: a\x00b@example.test\r\n\r\nbody\r\n".to_vec());
    add("nul in body", b"Subject: nul body\r\n\r\n\x00\x00\x00 then text\r\n".to_vec());
    add(
        "nul in attachment name",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Disposition: attachment; filename=\"a\x00b.txt\"\r\n\r\ndata\r\n--b--\r\n"
            .to_vec(),
    );
    add("control characters", b"Subject: \x01\x02\x03\x07\x08\r\n\r\n\x1b[31mred\x1b[0m\r\n".to_vec());

    // Attachments.
    add(
        "broken rfc 2231 filename",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Disposition: attachment; filename*=utf-8''%ZZ%\r\n\r\nx\r\n--b--\r\n"
            .to_vec(),
    );
    add(
        "attachment without a name",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment\r\n\r\n%PDF\r\n--b--\r\n"
            .to_vec(),
    );
    add(
        "8-bit attachment name",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Disposition: attachment; filename=\"r\xe9sum\xe9.txt\"\r\n\r\ncv\r\n--b--\r\n"
            .to_vec(),
    );

    // Line ends and emptiness.
    add("bare LF line ends", b"Subject: lf\nFrom: lf@example.test\n\nbody\nmore\n".to_vec());
    add("bare CR line ends", b"Subject: cr\rFrom: cr@example.test\r\rbody\r".to_vec());
    add("headers only", b"Subject: headers only\r\nFrom: h@example.test\r\n".to_vec());
    add("body only", b"\r\njust a body, no headers\r\n".to_vec());

    // The same Message-ID three times: three messages, each stored.
    for copy in 1..=3 {
        add(
            &format!("duplicate Message-ID {copy}"),
            format!("Message-ID: <same@example.test>\r\nSubject: copy {copy}\r\n\r\ncopy {copy}\r\n").into_bytes(),
        );
    }
    corpus
}

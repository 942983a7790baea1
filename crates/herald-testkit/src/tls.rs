//! Test certificates made with `openssl` (apt package openssl): a CA, a server certificate for
//! 127.0.0.1/localhost signed by it, a client certificate signed by it, and a second CA that
//! signed nothing (to play an untrusted one). Elliptic-curve keys, valid for a day.

use std::{path::PathBuf, process::Command};

use crate::scratch_dir;

pub struct TestCerts {
    pub dir: PathBuf,
}

impl TestCerts {
    pub fn generate() -> Self {
        let dir = scratch_dir("certs");
        let certs = Self { dir };
        certs.ca("ca", "herald test CA");
        certs.ca("other-ca", "some other CA");
        certs.leaf(
            "server",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        certs.leaf("client", "herald", "extendedKeyUsage=clientAuth\n");
        certs
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `redis-server` arguments for a TLS port using these certificates; `client_certs` is
    /// `tls-auth-clients`: `yes` (required), `optional` or `no`.
    pub fn redis_args(&self, tls_port: u16, client_certs: &str) -> Vec<String> {
        let mut args = vec!["--tls-port".to_owned(), tls_port.to_string()];
        for (name, value) in self.redis_settings(client_certs) {
            args.push(format!("--{name}"));
            args.push(value);
        }
        args
    }

    /// The TLS settings (name, value) of a server (or Sentinel) using these certificates: the
    /// server certificate, the CA its peers' certificates must chain to, and the client
    /// certificate it presents when it connects out (replication, the cluster bus, Sentinels),
    /// since the server certificate is for server authentication only.
    pub fn redis_settings(&self, client_certs: &str) -> Vec<(&'static str, String)> {
        vec![
            ("tls-cert-file", self.path("server.crt")),
            ("tls-key-file", self.path("server.key")),
            ("tls-client-cert-file", self.path("client.crt")),
            ("tls-client-key-file", self.path("client.key")),
            ("tls-ca-cert-file", self.path("ca.crt")),
            ("tls-auth-clients", client_certs.to_owned()),
        ]
    }

    /// Herald's TLS options trusting `ca` (a file name in the certificate directory: `ca.crt`,
    /// or `other-ca.crt` to play an untrusted one), with the client certificate.
    pub fn herald_args(&self, ca: &str) -> Vec<String> {
        vec![
            "--redis-tls-ca-file".into(),
            self.path(ca),
            "--redis-tls-cert-file".into(),
            self.path("client.crt"),
            "--redis-tls-key-file".into(),
            self.path("client.key"),
        ]
    }

    /// The same as a broker configuration.
    pub fn tls_files(&self, ca: &str) -> herald_broker::TlsFiles {
        herald_broker::TlsFiles {
            ca_file: Some(self.path(ca).into()),
            cert_file: Some(self.path("client.crt").into()),
            key_file: Some(self.path("client.key").into()),
        }
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .expect("run openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn key(&self, name: &str) {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}.key"),
        ]);
    }

    fn ca(&self, name: &str, cn: &str) {
        self.key(name);
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "1",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    fn leaf(&self, name: &str, cn: &str, extensions: &str) {
        self.key(name);
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        let ext = format!("{name}.ext");
        std::fs::write(self.dir.join(&ext), extensions).expect("write extensions");
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "1",
            "-extfile",
            &ext,
        ]);
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

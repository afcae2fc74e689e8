//! A test PKI made with rcgen at test time (no key is ever committed): a CA, a server
//! certificate for localhost/127.0.0.1, a client certificate for a given name, and a client
//! certificate from another CA that the first one's holders do not trust. Keys are 0600.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub struct Pki {
    dir: PathBuf,
}

fn write_pem(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Pki {
    /// Writes `ca.pem`, `other-ca.pem`, `server.{pem,key}` (signed by `ca`), `client.{pem,key}`
    /// for `client_cn` (signed by `ca`) and `wrong.{pem,key}` for the same name, signed by
    /// `other-ca`.
    pub fn new(dir: &Path, client_cn: &str) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        std::fs::create_dir_all(dir).unwrap();
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = p.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(p, key))
        };
        let leaf = |names: Vec<String>, cn: &str, usage, issuer: &Issuer<'_, KeyPair>| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (ca_pem, issuer) = ca("test syslog CA");
        let (other_pem, other) = ca("some other CA");
        write_pem(&dir.join("ca.pem"), &ca_pem);
        write_pem(&dir.join("other-ca.pem"), &other_pem);
        for (name, sans, cn, usage, ca) in [
            (
                "server",
                vec!["localhost".into(), "127.0.0.1".into()],
                "localhost",
                ExtendedKeyUsagePurpose::ServerAuth,
                &issuer,
            ),
            (
                "client",
                vec![client_cn.into()],
                client_cn,
                ExtendedKeyUsagePurpose::ClientAuth,
                &issuer,
            ),
            (
                "wrong",
                vec![client_cn.into()],
                client_cn,
                ExtendedKeyUsagePurpose::ClientAuth,
                &other,
            ),
        ] {
            let (c, k) = leaf(sans, cn, usage, ca);
            write_pem(&dir.join(format!("{name}.pem")), &c);
            write_pem(&dir.join(format!("{name}.key")), &k);
        }
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    pub fn p(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

//! `cairn certs create-ca|create-node`: the certificates a secured cluster needs, in
//! two commands (and one more per node). A node's certificate names it
//! (`node-<id>.cairn`) for its peers, plus the hosts clients reach it by, and serves
//! both ends of the peer port's mutual TLS and the HTTPS API.

use std::path::PathBuf;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Make the cluster's certificate authority: DIR/ca.crt (give to every node and
    /// client) and DIR/ca.key (keep offline; it signs node certificates).
    CreateCa {
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
    },
    /// Make node ID's certificate and key (DIR/node-ID.crt, DIR/node-ID.key), signed
    /// by DIR/ca.key. It names the node for its peers and is valid for each --host
    /// (the names and addresses clients use; default localhost and 127.0.0.1).
    CreateNode {
        id: u64,
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// A DNS name or IP address clients reach the node by (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::CreateCa { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name = name("Cairn cluster CA");
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key)?;
            super::write_new(&dir.join("ca.key"), &key.serialize_pem(), true)?;
            super::write_new(&dir.join("ca.crt"), &cert.pem(), false)?;
            eprintln!(
                "wrote {0}/ca.crt and {0}/ca.key; keep ca.key where only you can read it",
                dir.display()
            );
        }
        CertsCommand::CreateNode { id, dir, hosts } => {
            anyhow::ensure!(id > 0, "node ids start at 1");
            let read = |file: &str| {
                let path = dir.join(file);
                std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "reading {} (make the CA first: cairn certs create-ca --dir {})",
                        path.display(),
                        dir.display()
                    )
                })
            };
            let ca_key = KeyPair::from_pem(&read("ca.key")?)?;
            let issuer = Issuer::from_ca_cert_pem(&read("ca.crt")?, ca_key)?;
            let hosts = if hosts.is_empty() {
                vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
            } else {
                hosts
            };
            let mut names = vec![cairn_raft::transport::tls::node_name(id)];
            names.extend(hosts);
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names.clone())?;
            params.distinguished_name = name(&format!("cairn node {id}"));
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            // One certificate for both ends of the peer port, and for HTTPS.
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &issuer)?;
            super::write_new(
                &dir.join(format!("node-{id}.key")),
                &key.serialize_pem(),
                true,
            )?;
            super::write_new(&dir.join(format!("node-{id}.crt")), &cert.pem(), false)?;
            eprintln!(
                "wrote {0}/node-{id}.crt and {0}/node-{id}.key for {1}",
                dir.display(),
                names.join(", ")
            );
        }
    }
    Ok(())
}

fn name(common: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common);
    name
}

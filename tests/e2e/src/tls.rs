//! An app that terminates TLS itself, for the tests of `--tls-secret`: certificates from a
//! test CA, the echo app serving HTTPS with them from a `kubernetes.io/tls` Secret, and
//! requests from the client pod that verify the certificate.

use anyhow::Context as _;
use serde_json::json;

use crate::TestNamespace;

/// A test CA and a certificate it issued: what a client trusts, and what a server presents.
#[derive(Debug)]
pub struct Certificates {
    /// The CA's certificate (PEM): what clients trust.
    pub ca: String,
    /// The server's certificate (PEM).
    pub cert: String,
    /// The server's key (PEM).
    pub key: String,
}

/// A new CA, and a server certificate it issued for `names`.
pub fn issue(names: &[String]) -> Certificates {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    (ca_params.distinguished_name).push(rcgen::DnType::CommonName, "kubedev test CA");
    let ca_key = rcgen::KeyPair::generate().expect("a CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("a CA");
    let key = rcgen::KeyPair::generate().expect("a key");
    let params = rcgen::CertificateParams::new(names.to_vec()).expect("names");
    let cert = params.signed_by(&key, &ca).expect("a certificate");
    Certificates {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

impl TestNamespace {
    /// The echo app `name` answering HTTPS on its port `https` (8443), with `certificates`
    /// from Secret `NAME-tls`, behind Service `name` on port 8443.
    pub async fn deploy_echo_https(&self, name: &str, certificates: &Certificates) {
        let secret = format!("{name}-tls");
        let labels = json!({"app": name});
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [{
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret},
                "type": "kubernetes.io/tls",
                "stringData": {"tls.crt": certificates.cert, "tls.key": certificates.key}
            }, {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "terminationGracePeriodSeconds": 1,
                            "volumes": [{"name": "tls", "secret": {"secretName": secret}}],
                            "containers": [{
                                "name": "echo",
                                "image": crate::ECHO_IMAGE,
                                "imagePullPolicy": "Never",
                                "args": ["--tls-dir", "/tls", "--https", "8443"],
                                "ports": [{"name": "https", "containerPort": 8443}],
                                "volumeMounts": [{"name": "tls", "mountPath": "/tls"}],
                                "readinessProbe": {"tcpSocket": {"port": "https"}, "periodSeconds": 1}
                            }]
                        }
                    }
                }
            }, {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {"selector": labels, "ports": [{"name": "https", "port": 8443, "targetPort": "https"}]}
            }]
        });
        self.apply_json(&manifest).expect("the HTTPS app");
        self.wait_deployment_ready(name)
            .await
            .expect("the HTTPS app ready");
    }

    /// GETs `path` from `target` (`HOST:PORT`) in TLS from pod `client`, with `headers`,
    /// trusting only `ca` for the name `server_name`; returns the response body.
    pub fn https_get(
        &self,
        client: &str,
        (target, server_name): (&str, &str),
        ca: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let headers: String = (headers.iter())
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {server_name}\r\n{headers}Connection: close\r\n\r\n"
        );
        let (ca, name) = (
            format!("PROBE_CA={ca}"),
            format!("PROBE_SERVER_NAME={server_name}"),
        );
        let command = ["env", &ca, &name, "probe", "tls", target, &request];
        let response = self.exec(client, &command)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .with_context(|| format!("not an HTTP response: {response:?}"))?;
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        Ok(body.to_owned())
    }
}

//! `interlock ca-bundle`, read by OpenSSL: the cluster CA first, then an interception CA whose
//! certificate permits only the API server's names and addresses, from a key kept private.
use std::{fs, os::unix::fs::PermissionsExt, process::Command};

use interlock_e2e::*;

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_bundle_holds_the_cluster_ca_and_a_name_constrained_interception_ca() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &path("cluster.key"),
        "-out",
        &path("cluster.crt"),
        "-subj",
        "/CN=cluster",
        "-days",
        "1",
    ]);
    let config = format!(
        "targets:\n  - name: api\n    address: 10.232.0.1:443\ninterception_ca:\n  key: {}\n  \
         names: [ABC.gr7.eu-west-1.eks.amazonaws.com]\n  addresses: [10.232.0.1]\n",
        path("ca/interception.key")
    );
    fs::write(path("config.yaml"), config).unwrap();
    let bundle = |config: &str| {
        let out = Command::new(interlock_bin())
            .args([
                "ca-bundle",
                "--config",
                config,
                "--cluster-ca",
                &path("cluster.crt"),
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, first, log) = bundle(&path("config.yaml"));
    assert!(ok, "{log}");
    assert!(log.contains("generated a new interception CA key"), "{log}");
    let key_mode = fs::metadata(path("ca/interception.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(!first.contains("PRIVATE KEY") && !log.contains("PRIVATE KEY"));

    let cluster = fs::read_to_string(path("cluster.crt")).unwrap();
    assert!(
        first.starts_with(cluster.trim_end()),
        "the cluster CA comes first"
    );
    let interception = &first[cluster.trim_end().len()..];
    fs::write(path("interception.crt"), interception).unwrap();
    let text = openssl(&["x509", "-in", &path("interception.crt"), "-noout", "-text"]);
    assert!(text.contains("X509v3 Name Constraints: critical"), "{text}");
    for permitted in [
        "DNS:kubernetes\n",
        "DNS:kubernetes.default\n",
        "DNS:kubernetes.default.svc\n",
        "DNS:kubernetes.default.svc.cluster.local\n",
        "DNS:abc.gr7.eu-west-1.eks.amazonaws.com\n",
        "IP:10.232.0.1/255.255.255.255\n",
    ] {
        assert!(text.contains(permitted), "{permitted:?} in {text}");
    }
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");

    // Issued again from the same key: the same subject and key, so bundles published before
    // still verify what it signs.
    let (ok, second, log) = bundle(&path("config.yaml"));
    assert!(ok && !log.contains("generated"), "{log}");
    let key_of = |pem: &str| {
        fs::write(path("x.crt"), pem).unwrap();
        openssl(&[
            "x509",
            "-in",
            &path("x.crt"),
            "-noout",
            "-pubkey",
            "-subject",
        ])
    };
    assert_eq!(
        key_of(interception),
        key_of(&second[cluster.trim_end().len()..])
    );

    fs::set_permissions(
        path("ca/interception.key"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (ok, _, log) = bundle(&path("config.yaml"));
    assert!(!ok && log.contains("chmod 600"), "{log}");
}

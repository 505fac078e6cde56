//! Inputs and outputs on an S3-compatible object store: moto's server,
//! started on 127.0.0.1 by the test. `.ci/run` installs it and sets
//! GATO_MOTO_SERVER and GATO_REQUIRE_MOTO. Without a server the tests
//! print a message and pass, unless GATO_REQUIRE_MOTO is set.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;

use crate::common::{category_column, gato_bin};
use crate::config_errors::write_parquet;

const BUCKET: &str = "gato-test";

/// A moto server, stopped on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> Option<PathBuf> {
    let found = std::env::var_os("GATO_MOTO_SERVER").map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("moto_server"))
                .find(|p| p.is_file())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var_os("GATO_REQUIRE_MOTO").is_none(),
            "GATO_REQUIRE_MOTO is set but no moto_server was found"
        );
        eprintln!(
            "moto_server not found (set GATO_MOTO_SERVER); object store test skipped"
        );
    }
    found
}

fn start_moto() -> Option<Moto> {
    let server = moto_server()?;
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let moto = Moto { child, port };
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "moto_server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Create the bucket with a plain HTTP request; moto takes it unsigned.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "creating the bucket: {reply}");
    Some(moto)
}

fn environment(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

fn store(port: u16) -> Arc<dyn ObjectStore> {
    Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_region("us-east-1")
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_allow_http(true)
            .build()
            .unwrap(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn put(port: u16, key: &str, file: &Path) {
    let bytes = std::fs::read(file).unwrap();
    runtime()
        .block_on(store(port).put(&ObjectPath::parse(key).unwrap(), bytes.into()))
        .unwrap();
}

fn get(port: u16, key: &str, file: &Path) {
    let bytes = runtime()
        .block_on(async {
            store(port).get(&ObjectPath::parse(key).unwrap()).await?.bytes().await
        })
        .unwrap();
    std::fs::write(file, bytes).unwrap();
}

fn pipeline(files: &str, output: &str) -> String {
    format!(
        "name: s3\nsources:\n  mc:\n    files: [\"{files}\"]\n    process_column: process\n\
         processes:\n  - {{ name: signal, role: signal, source: mc }}\n\
         \x20 - {{ name: bkg1, role: background, source: mc }}\n\
         selection:\n  sql: SELECT score, weight FROM events WHERE score > 0.01\n  \
         discriminants: [score]\nmodel:\n  kind: sigmoid\n  categories: [3]\n\
         training:\n  epochs: 4\noutput: {output}\n"
    )
}

fn gato(dir: &Path, port: u16, args: &[&str]) -> std::process::Output {
    Command::new(gato_bin())
        .args(args)
        .envs(environment(port))
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn run_reads_and_writes_s3() {
    let Some(moto) = start_moto() else { return };
    let port = moto.port;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    // Two inputs with interleaved processes.
    for (name, shift) in [("a", 0usize), ("b", 1)] {
        let n = 4000;
        let process: Vec<&str> = (0..n)
            .map(|i| if (i + shift) % 4 == 0 { "signal" } else { "bkg1" })
            .collect();
        let score: Vec<f64> = (0..n)
            .map(|i| {
                let u = ((i * 7919 + shift * 13) % 4001) as f64 / 4001.0;
                if process[i] == "signal" { u.sqrt() } else { u * u }
            })
            .collect();
        let file = local.join(format!("{name}.parquet"));
        write_parquet(&file, &process, &score, &vec![0.5; n]);
        put(port, &format!("in/{name}.parquet"), &file);
    }
    // `*` does not reach into sub-prefixes, as in a shell.
    put(port, "in/sub/c.parquet", &local.join("a.parquet"));

    std::fs::write(
        dir.path().join("s3.yaml"),
        pipeline(&format!("s3://{BUCKET}/in/*.parquet"), &format!("s3://{BUCKET}/out")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("local.yaml"),
        pipeline(&format!("{}/*.parquet", local.display()), "local_out"),
    )
    .unwrap();
    let out = gato(dir.path(), port, &["-q", "run", "s3.yaml"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = gato(dir.path(), port, &["-q", "run", "local.yaml"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The summary on the store matches the local run and names the objects.
    let fetched = dir.path().join("summary.json");
    get(port, "out/summary.json", &fetched);
    let remote: Value =
        serde_json::from_str(&std::fs::read_to_string(&fetched).unwrap()).unwrap();
    let local_summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("local_out/summary.json")).unwrap(),
    )
    .unwrap();
    let (r, l) = (&remote["runs"][0], &local_summary["runs"][0]);
    assert_eq!(r["table"], l["table"]);
    assert_eq!(r["boundaries"], l["boundaries"]);
    let outputs = r["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    for (o, lo) in outputs.iter().zip(l["outputs"].as_array().unwrap()) {
        let url = o["output"].as_str().unwrap();
        let input = o["input"].as_str().unwrap();
        assert!(url.starts_with(&format!("s3://{BUCKET}/out/sigmoid_k3/")), "{url}");
        assert!(input.starts_with(&format!("s3://{BUCKET}/in/")), "{input}");
        let key = url.trim_start_matches(&format!("s3://{BUCKET}/"));
        let copy = dir.path().join("fetched.parquet");
        get(port, key, &copy);
        let local_output = dir.path().join(lo["output"].as_str().unwrap());
        assert_eq!(category_column(&copy), category_column(&local_output), "{url}");
    }
    // The report and the model went up too.
    for key in ["out/report.html", "out/sigmoid_k3/model.json", "out/histograms.json"] {
        get(port, key, &dir.path().join("fetched"));
    }

    // `gato apply` with the model, the inputs and the outputs on the store
    // writes the same categories as with local files.
    let model = format!("s3://{BUCKET}/out/sigmoid_k3/model.json");
    let inputs = format!("s3://{BUCKET}/in/*.parquet");
    let applied = format!("s3://{BUCKET}/applied");
    let out =
        gato(dir.path(), port, &["apply", "--model", &model, "--out", &applied, &inputs]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("s3://{BUCKET}/in/a.parquet -> {applied}/a.parquet")),
        "{stdout}"
    );
    let local_model = "local_out/sigmoid_k3/model.json";
    let a = local.join("a.parquet").display().to_string();
    let b = local.join("b.parquet").display().to_string();
    let out = gato(
        dir.path(),
        port,
        &["apply", "--model", local_model, "--out", "local_applied", &a, &b],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["a.parquet", "b.parquet"] {
        let copy = dir.path().join("fetched.parquet");
        get(port, &format!("applied/{name}"), &copy);
        let expected = dir.path().join("local_applied").join(name);
        assert_eq!(category_column(&copy), category_column(&expected), "{name}");
    }
    let out =
        gato(dir.path(), port, &["apply", "--model", &model, "--out", &applied, &inputs]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{applied}/a.parquet already exists")), "{stderr}");

    // `#`, `?` and `%` are characters of keys, not URL syntax.
    let odd = format!("s3://{BUCKET}/odd/o#1?x%41");
    let out =
        gato(dir.path(), port, &["apply", "--model", &model, "--out", &odd, &inputs]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let copy = dir.path().join("fetched.parquet");
    get(port, "odd/o#1?x%41/b.parquet", &copy);
    let expected = dir.path().join("local_applied/b.parquet");
    assert_eq!(category_column(&copy), category_column(&expected));

    // The input object is never replaced, not even with --overwrite.
    let a_url = format!("s3://{BUCKET}/in/a.parquet");
    let into_inputs = format!("s3://{BUCKET}//in/");
    let out = gato(
        dir.path(),
        port,
        &["apply", "--model", &model, "--out", &into_inputs, "--overwrite", &a_url],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is the input object"), "{stderr}");

    // A prefix is not an input.
    for (prefix, expected) in [
        (format!("s3://{BUCKET}/in"), "is a prefix, not an object"),
        (format!("s3://{BUCKET}/in/"), "names a bucket or a prefix"),
    ] {
        let out =
            gato(dir.path(), port, &["apply", "--model", &model, "--out", "p", &prefix]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }

    // A second run does not replace the first without --overwrite.
    let out = gato(dir.path(), port, &["-q", "run", "s3.yaml"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already holds the summary.json"), "{stderr}");
    let out = gato(dir.path(), port, &["-q", "run", "s3.yaml", "--overwrite"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn missing_objects_are_named() {
    let Some(moto) = start_moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (files, expected) in [
        (format!("s3://{BUCKET}/nothing/here.parquet"), "not found"),
        (format!("s3://{BUCKET}/nothing/*.parquet"), "matches no object"),
    ] {
        std::fs::write(dir.path().join("p.yaml"), pipeline(&files, "out")).unwrap();
        let out = gato(dir.path(), moto.port, &["-q", "run", "p.yaml"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&files), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn missing_bucket_stops_before_training() {
    let Some(moto) = start_moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.parquet");
    write_parquet(&input, &["signal", "bkg1", "bkg1"], &[0.9, 0.1, 0.2], &[1.0; 3]);
    std::fs::write(
        dir.path().join("p.yaml"),
        pipeline(&input.display().to_string(), "s3://no-such-bucket/run"),
    )
    .unwrap();
    let out = gato(dir.path(), moto.port, &["run", "p.yaml"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("s3://no-such-bucket/run"), "{stderr}");
    assert!(stderr.contains("NoSuchBucket"), "{stderr}");
    assert!(stderr.contains("create the bucket"), "{stderr}");
    assert!(!stderr.contains("<Code>"), "{stderr}");
    // The check comes before the selection and the training.
    assert!(!stderr.contains("selected"), "{stderr}");
}

#[test]
fn bad_urls_and_endpoints_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = |files: &str, output: &str, endpoint: &str| {
        std::fs::write(dir.path().join("p.yaml"), pipeline(files, output)).unwrap();
        let out = Command::new(gato_bin())
            .args(["-q", "run", "p.yaml"])
            .env("AWS_ENDPOINT", endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let http = "http://127.0.0.1:9";
    let stderr = run("s3://bucket/a.parquet", "out", "127.0.0.1:9");
    assert!(
        stderr.contains("AWS_ENDPOINT=127.0.0.1:9 is not a valid endpoint"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stderr = run("ftp://host/a.parquet", "out", http);
    assert!(stderr.contains("unsupported URL scheme `ftp://`"), "{stderr}");
    let stderr = run("S3://bucket/a.parquet", "out", http);
    assert!(stderr.contains("unsupported URL scheme `S3://`"), "{stderr}");
    let stderr = run("s3:///a.parquet", "out", http);
    assert!(stderr.contains("the bucket name is missing"), "{stderr}");
    let input = dir.path().join("in.parquet");
    write_parquet(&input, &["signal", "bkg1"], &[0.9, 0.1], &[1.0; 2]);
    let stderr = run(&input.display().to_string(), "az://container/out", http);
    assert!(stderr.contains("unsupported URL scheme `az://`"), "{stderr}");

    // generate rejects URLs with a message; apply rejects other schemes.
    for (args, expected) in [
        (
            vec!["generate", "toy-1d", "--out", "s3://bucket/toy.parquet"],
            "reads and writes local files only",
        ),
        (
            vec!["apply", "--model", "m.json", "--out", "az://c/applied", "in.parquet"],
            "--out az://c/applied: unsupported URL scheme `az://`",
        ),
    ] {
        let out = Command::new(gato_bin())
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
    assert!(!dir.path().join("s3:").exists(), "a local folder named after the URL");
    assert!(!dir.path().join("az:").exists(), "a local folder named after the URL");
}

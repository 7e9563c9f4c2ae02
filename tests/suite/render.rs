//! What a default render contains.

use std::path::PathBuf;

use template_tests::{relative_files, repo_root};

use crate::DEFAULT_RENDER;

#[test]
fn a_render_holds_exactly_the_files_of_template_without_its_config() {
    let template = repo_root().join("template");
    let expected: Vec<PathBuf> = relative_files(&template)
        .into_iter()
        .filter(|path| path != &PathBuf::from("cargo-generate.toml"))
        .collect();

    assert_eq!(DEFAULT_RENDER.files(), expected);
}

/// The folders `template/cargo-generate.toml` excludes from Liquid (vendored files).
fn excluded_from_liquid() -> Vec<PathBuf> {
    let config: toml::Table =
        std::fs::read_to_string(repo_root().join("template/cargo-generate.toml"))
            .unwrap()
            .parse()
            .unwrap();
    config["template"]
        .get("exclude")
        .and_then(|exclude| exclude.as_array())
        .map(|exclude| {
            exclude
                .iter()
                .map(|path| PathBuf::from(path.as_str().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn no_liquid_is_left_in_any_rendered_file() {
    let excluded = excluded_from_liquid();
    assert!(!excluded.is_empty(), "the vendored assets are excluded");
    for file in DEFAULT_RENDER.files() {
        if excluded.iter().any(|folder| file.starts_with(folder)) {
            continue;
        }
        let text = std::fs::read_to_string(DEFAULT_RENDER.dir.join(&file))
            .unwrap_or_else(|e| panic!("{} is not text: {e}", file.display()));
        for (number, line) in text.lines().enumerate() {
            // `${{ ... }}` is GitHub Actions syntax, kept verbatim on purpose.
            let without_actions = line.replace("${{", "");
            assert!(
                !without_actions.contains("{{") && !line.contains("{%"),
                "{}:{}: leftover Liquid: {line}",
                file.display(),
                number + 1
            );
        }
    }
}

#[test]
fn the_answers_appear_where_they_are_used() {
    let manifest: toml::Table = DEFAULT_RENDER.read("Cargo.toml").parse().unwrap();
    assert_eq!(manifest["package"]["name"].as_str(), Some("orders"));

    let lib = DEFAULT_RENDER.read("src/lib.rs");
    assert!(lib.contains(r#"service: "orders""#), "{lib}");
    assert!(lib.contains(r#"namespace: "acme""#), "{lib}");
    assert!(lib.contains("http_port: 8080"), "{lib}");

    let readme = DEFAULT_RENDER.read("README.md");
    assert!(readme.starts_with("# orders"), "{readme}");
    assert!(
        readme.contains("us-east1-docker.pkg.dev/pipeforce/acme/orders"),
        "the README names the image"
    );

    let lock = DEFAULT_RENDER.read("Cargo.lock");
    assert!(
        lock.contains("name = \"orders\""),
        "Cargo.lock names the package"
    );

    // What scripts/upgrade-template.sh renders the old and new template with.
    let record: toml::Table = DEFAULT_RENDER
        .read(".pipeforce-template.toml")
        .parse()
        .unwrap();
    let answers = &record["answers"];
    assert_eq!(answers["project-name"].as_str(), Some("orders"));
    assert_eq!(answers["namespace"].as_str(), Some("acme"));
    assert_eq!(answers["http_port"].as_str(), Some("8080"));
    assert_eq!(
        answers["registry"].as_str(),
        Some("us-east1-docker.pkg.dev/pipeforce/acme")
    );
    assert_eq!(
        record["template"]["revision"].as_str(),
        Some(""),
        "no revision was given, so none is claimed"
    );

    if DEFAULT_RENDER.dir.join("Dockerfile").exists() {
        let dockerfile = DEFAULT_RENDER.read("Dockerfile");
        assert!(dockerfile.contains("orders"), "{dockerfile}");
    }
}

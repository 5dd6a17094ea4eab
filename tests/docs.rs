//! What the documentation and the build promise, checked: the settings reference in
//! docs/configuration.md is what the flags declare, every page the README links to exists, and
//! the API tier's binary links no libtorch.

use std::process::Command;

use blipserve_testkit::repo;

#[test]
fn the_settings_reference_is_generated_from_the_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_blipserve")).arg("settings-reference").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8(out.stdout).unwrap();
    for flag in ["`--max-questions`", "`--health-interval-ms`", "`--cloudwatch-interval-s`", "`--drain-delay-ms`"] {
        assert!(generated.contains(flag), "{flag} missing from the generated reference:\n{generated}");
    }
    let page = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let documented = page
        .split("<!-- settings-reference: begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- settings-reference: end -->").next())
        .expect("docs/configuration.md has the settings-reference markers");
    assert_eq!(
        documented.trim(),
        generated.trim(),
        "docs/configuration.md's settings tables differ from the flags: run `make docs`"
    );
}

#[test]
fn every_page_the_readme_links_to_exists() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut checked = 0;
    for link in readme.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
        if link.starts_with("http") || link.starts_with('#') {
            continue;
        }
        let path = link.split('#').next().unwrap_or(link);
        assert!(repo().join(path).exists(), "README links to {link}, which does not exist");
        checked += 1;
    }
    assert!(checked >= 8, "expected the README to link the docs pages, found {checked} links");
}

fn linked_libraries(exe: &str) -> String {
    let out = Command::new("ldd").arg(exe).output().expect("run ldd");
    assert!(out.status.success(), "ldd {exe}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_api_tier_binary_links_no_libtorch() {
    let api = linked_libraries(env!("CARGO_BIN_EXE_blipserve-api"));
    for lib in ["libtorch", "libc10"] {
        assert!(!api.contains(lib), "blipserve-api links {lib}:\n{api}");
    }
    // The same check on the full binary finds libtorch: the test can tell the two apart.
    let full = linked_libraries(env!("CARGO_BIN_EXE_blipserve"));
    assert!(full.contains("libtorch"), "blipserve should link libtorch:\n{full}");
}

#[test]
fn the_api_tier_binary_runs_the_gateway_and_the_load_tester() {
    let out = Command::new(env!("CARGO_BIN_EXE_blipserve-api")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && help.contains("gateway") && help.contains("loadtest"), "{help}");
    assert!(!help.lines().any(|l| l.trim_start().starts_with("serve ")), "the API tier has no serve role:\n{help}");
}

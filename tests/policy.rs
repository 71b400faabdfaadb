//! Policy documents: every fixture under tests/policy/rejected/ must be rejected
//! with the message in its `.expected` file; the README's example must parse.

use std::fs;

use edge_ratelimit::Policy;

#[test]
fn every_rejected_fixture_is_rejected_with_its_message() {
    let mut seen = 0;
    let mut entries: Vec<_> = fs::read_dir("tests/policy/rejected").expect("fixtures").flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let doc = fs::read_to_string(&path).unwrap();
        let expected = fs::read_to_string(path.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{} has no .expected file", path.display()));
        let err = Policy::parse(&doc, 60, false).expect_err(&format!("{} was accepted", path.display()));
        assert!(
            err.contains(expected.trim()),
            "{}:\n  expected: {}\n  got:      {err}",
            path.display(),
            expected.trim()
        );
        seen += 1;
    }
    assert!(seen >= 20, "only {seen} fixtures");
}

/// The first JSON block of a document.
fn first_json_block(file: &str) -> String {
    let text = fs::read_to_string(file).unwrap();
    let start =
        text.find("```json\n").unwrap_or_else(|| panic!("{file} has a JSON policy example")) + "```json\n".len();
    let end = start + text[start..].find("```").unwrap();
    text[start..end].to_string()
}

#[test]
fn the_readme_example_policy_parses_and_is_the_manuals() {
    let example = first_json_block("README.md");
    let policy = Policy::parse(&example, 60, false).unwrap();
    assert!(policy.rules.len() >= 3);
    assert_eq!(example, first_json_block("docs/policy.md"), "the README shows docs/policy.md's example");
}

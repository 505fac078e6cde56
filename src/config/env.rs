//! `${VAR}` and `${VAR:-default}` substitution in pipeline text.

use crate::error::{Error, Result};

/// Replaces `${VAR}` and `${VAR:-default}` in `text` with values from `lookup`.
///
/// `$${` stands for a literal `${`. A variable that is unset (or empty, for
/// the `:-` form) and has no default is an error naming the variable and the
/// line it is on. Whole-line comments (first non-blank character `#`) are
/// left as they are.
pub fn substitute(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut line_number = 0;
    for line in text.split_inclusive('\n') {
        line_number += 1;
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            out.push_str(&substitute_line(line, line_number, &lookup)?);
        }
    }
    Ok(out)
}

fn substitute_line(
    text: &str,
    line: usize,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if after.starts_with("$${") {
            out.push_str("${");
            rest = &after[3..];
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            continue;
        }
        let Some(end) = after.find('}') else {
            return Err(Error::Config(format!(
                "line {line}: unterminated `${{` in the pipeline; close it with `}}` \
                 or write `$${{` for a literal `${{`"
            )));
        };
        let body = &after[2..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        let valid_name = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return Err(Error::Config(format!(
                "line {line}: `${{{body}}}` is not a valid variable reference; \
                 use `${{NAME}}` or `${{NAME:-default}}`"
            )));
        }
        let value = match (lookup(name), default) {
            (Some(value), Some(default)) if value.is_empty() => default.to_string(),
            (Some(value), _) => value,
            (None, Some(default)) => default.to_string(),
            (None, None) => {
                return Err(Error::Config(format!(
                    "line {line}: environment variable {name} is not set; set it \
                     or give a default as `${{{name}:-VALUE}}`"
                )));
            }
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "INPUT" => Some("/data/a.parquet".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitute_set_variable() {
        assert_eq!(substitute("f: ${INPUT}", env).unwrap(), "f: /data/a.parquet");
    }

    #[test]
    fn substitute_default_when_unset_or_empty() {
        assert_eq!(substitute("${NOPE:-x.parquet}", env).unwrap(), "x.parquet");
        assert_eq!(substitute("${EMPTY:-d}", env).unwrap(), "d");
        assert_eq!(substitute("${INPUT:-d}", env).unwrap(), "/data/a.parquet");
    }

    #[test]
    fn substitute_escape_and_plain_dollar() {
        assert_eq!(substitute("a $$ b $${X}", env).unwrap(), "a $$ b ${X}");
    }

    #[test]
    fn substitute_unset_names_variable_and_line() {
        let err = substitute("a: 1\nb: ${NOPE}\n", env).unwrap_err().to_string();
        assert_eq!(
            err,
            "line 2: environment variable NOPE is not set; set it or give a \
             default as `${NOPE:-VALUE}`"
        );
    }

    #[test]
    fn substitute_skips_comment_lines() {
        assert_eq!(
            substitute("  # ${NOPE}\nf: ${INPUT}\n", env).unwrap(),
            "  # ${NOPE}\nf: /data/a.parquet\n"
        );
    }

    #[test]
    fn substitute_rejects_bad_reference() {
        assert!(substitute("${1A}", env).is_err());
        assert!(substitute("${A", env).is_err());
    }
}

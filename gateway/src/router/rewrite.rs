//! Path rewriting and normalisation: pure string functions.

use super::Matched;
use crate::config::RouteAction;

/// Removes `.` and `..` segments (RFC 3986 §5.2.4) so that routing and the
/// upstream see the same path; `/a/../b` routes as `/b`. Returns `None` for
/// a path that is not origin-form.
pub fn normalize_path(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !path.starts_with('/') {
        return None;
    }
    let needs = path.split('/').any(|s| s == "." || s == "..");
    if !needs {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Some(std::borrow::Cow::Owned(format!("/{}", out.join("/"))))
}

/// The path to send upstream for a matched forward route: `strip_prefix`
/// removed, or `rewrite_path` filled with the pattern's params; otherwise the
/// request path unchanged.
pub fn rewrite_path(m: &Matched<'_>, path: &str) -> Option<String> {
    let RouteAction::Forward(f) = &m.route.action else {
        return None;
    };
    if let Some(prefix) = &f.strip_prefix {
        let rest = if prefix == "/" {
            path
        } else {
            path.strip_prefix(prefix.as_str()).unwrap_or(path)
        };
        return Some(if rest.is_empty() {
            "/".to_string()
        } else {
            rest.to_string()
        });
    }
    let template = f.rewrite_path.as_ref()?;
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template.as_str();
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| c + open);
        let name = &rest[open + 1..close];
        if let Some((_, v)) = m.params.iter().find(|(n, _)| *n == name) {
            out.push_str(v);
        }
        rest = rest.get(close + 1..).unwrap_or("");
    }
    out.push_str(rest);
    Some(out)
}

//! `google.api.http` path templates: parsing and matching.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! `{field}` is `{field=*}`. `*` matches one non-empty segment, `**` the rest of the path (it
//! must be the last segment). A variable's value is percent-decoded; a multi-segment value keeps
//! its `/` separators (and `%2F` stays encoded, as the spec asks).

use percent_encoding::percent_decode_str;

/// A template that does not follow the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path template {template:?}: {reason}")]
pub(crate) struct Error {
    template: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`
    Single,
    /// `**`
    Rest,
}

/// A variable: a field path bound to segments `start..end`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field_path: String,
    start: usize,
    end: usize,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

impl Template {
    /// Parses a template.
    pub(crate) fn parse(template: &str) -> Result<Template, Error> {
        let mut parser = Parser {
            template,
            rest: template,
            segments: Vec::new(),
            variables: Vec::new(),
        };
        parser.expect('/')?;
        parser.segments(false)?;
        let verb = if parser.eat(':') {
            Some(parser.literal()?)
        } else {
            None
        };
        if !parser.rest.is_empty() {
            return Err(parser.error(format!("unexpected {:?}", parser.rest)));
        }
        if let Some(i) = parser.segments.iter().position(|s| *s == Segment::Rest)
            && i + 1 != parser.segments.len()
        {
            return Err(parser.error("`**` must be the last segment".into()));
        }
        Ok(Template {
            segments: parser.segments,
            variables: parser.variables,
            verb,
        })
    }

    /// The field paths of the variables, in order.
    pub(crate) fn field_paths(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field_path.as_str())
    }

    /// How specific the template is, for ordering: more literal segments first, then a verb,
    /// then fewer wildcards.
    pub(crate) fn specificity(&self) -> (usize, bool, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let rest = self
            .segments
            .iter()
            .filter(|s| **s == Segment::Rest)
            .count();
        (literals, self.verb.is_some(), usize::MAX - rest)
    }

    /// Matches a request path (without the query); on success, the variables' values by field
    /// path, in template order — or, when a value is not UTF-8 once percent-decoded, the raw
    /// path part it came from (never decoded lossily: `%FF` and `%FE` would both become U+FFFD,
    /// and two different raw ids the same entity).
    pub(crate) fn matches(&self, path: &str) -> Option<Result<Vec<(String, String)>, String>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = path.split('/').collect();
        // The part range each segment matched.
        let mut ranges = Vec::with_capacity(self.segments.len());
        let mut next = 0;
        for segment in &self.segments {
            match segment {
                Segment::Literal(literal) => {
                    let part = parts.get(next)?;
                    if *part != literal && decode(part, true).as_deref() != Ok(literal.as_str()) {
                        return None;
                    }
                    ranges.push(next..next + 1);
                    next += 1;
                }
                Segment::Single => {
                    let part = parts.get(next)?;
                    if part.is_empty() {
                        return None;
                    }
                    ranges.push(next..next + 1);
                    next += 1;
                }
                Segment::Rest => {
                    ranges.push(next..parts.len());
                    next = parts.len();
                }
            }
        }
        if next != parts.len() {
            return None;
        }
        let mut values = Vec::with_capacity(self.variables.len());
        for variable in &self.variables {
            let from = ranges[variable.start].start;
            let to = ranges[variable.end - 1].end;
            let single = to - from == 1
                && variable.end - variable.start == 1
                && self.segments[variable.start] != Segment::Rest;
            let mut decoded = Vec::with_capacity(to - from);
            for part in &parts[from..to] {
                match decode(part, single) {
                    Ok(part) => decoded.push(part),
                    Err(()) => return Some(Err((*part).to_string())),
                }
            }
            let value = decoded.join("/");
            if value.is_empty() {
                return None;
            }
            values.push((variable.field_path.clone(), value));
        }
        Some(Ok(values))
    }
}

/// Percent-decodes a path part; `%2F` stays encoded unless `slash` (single-segment values).
/// `Err` when the bytes are not UTF-8.
fn decode(part: &str, slash: bool) -> Result<String, ()> {
    let utf8 = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .map_err(|_| ())
    };
    if slash {
        return utf8(part);
    }
    part.split_inclusive("%2F")
        .flat_map(|piece| piece.split_inclusive("%2f"))
        .map(|piece| {
            let (body, kept) = if let Some(body) = piece.strip_suffix("%2F") {
                (body, "%2F")
            } else if let Some(body) = piece.strip_suffix("%2f") {
                (body, "%2f")
            } else {
                (piece, "")
            };
            Ok(format!("{}{kept}", utf8(body)?))
        })
        .collect()
}

struct Parser<'a> {
    template: &'a str,
    rest: &'a str,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl Parser<'_> {
    fn error(&self, reason: String) -> Error {
        Error {
            template: self.template.to_string(),
            reason,
        }
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, c: char) -> Result<(), Error> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(format!("expected {c:?} at {:?}", self.rest)))
        }
    }

    fn segments(&mut self, in_variable: bool) -> Result<(), Error> {
        loop {
            self.segment(in_variable)?;
            if !self.eat('/') {
                return Ok(());
            }
        }
    }

    fn segment(&mut self, in_variable: bool) -> Result<(), Error> {
        if let Some(rest) = self.rest.strip_prefix("**") {
            self.rest = rest;
            self.segments.push(Segment::Rest);
        } else if self.eat('*') {
            self.segments.push(Segment::Single);
        } else if self.eat('{') {
            if in_variable {
                return Err(self.error("variables cannot be nested".into()));
            }
            let field_path = self.field_path()?;
            let start = self.segments.len();
            if self.eat('=') {
                self.segments(true)?;
            } else {
                self.segments.push(Segment::Single);
            }
            self.expect('}')?;
            self.variables.push(Variable {
                field_path,
                start,
                end: self.segments.len(),
            });
        } else {
            let literal = self.literal()?;
            self.segments.push(Segment::Literal(literal));
        }
        Ok(())
    }

    fn literal(&mut self) -> Result<String, Error> {
        let end = self
            .rest
            .find(['/', '{', '}', ':', '*', '='])
            .unwrap_or(self.rest.len());
        if end == 0 {
            return Err(self.error(format!("expected a literal at {:?}", self.rest)));
        }
        let (literal, rest) = self.rest.split_at(end);
        self.rest = rest;
        Ok(literal.to_string())
    }

    fn field_path(&mut self) -> Result<String, Error> {
        let end = self
            .rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(self.rest.len());
        let (path, rest) = self.rest.split_at(end);
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(self.error(format!("expected a field path at {:?}", self.rest)));
        }
        self.rest = rest;
        Ok(path.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        Template::parse(template)
            .unwrap()
            .matches(path)
            .map(|values| values.expect("UTF-8 values"))
    }

    fn pairs(items: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            items
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn templates_match_literals_variables_wildcards_and_verbs() {
        assert_eq!(
            vars("/cart/{user_id}/items/add", "/cart/u1/items/add"),
            pairs(&[("user_id", "u1")])
        );
        assert_eq!(vars("/cart/{user_id}/items/add", "/cart/u1/items"), None);
        assert_eq!(
            vars("/carts/{user_id}", "/carts/"),
            None,
            "an empty variable does not match"
        );
        assert_eq!(
            vars("/carts/{user_id}", "/carts/a%20b"),
            pairs(&[("user_id", "a b")])
        );
        assert_eq!(
            vars("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books/b2"),
            pairs(&[("name", "shelves/s1/books/b2")])
        );
        assert_eq!(
            vars("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/papers/b2"),
            None
        );
        assert_eq!(
            vars("/files/{path=**}", "/files/a/b%2Fc/d"),
            pairs(&[("path", "a/b%2Fc/d")]),
            "multi-segment values keep %2F"
        );
        assert_eq!(
            vars("/files/{path=**}", "/files/a%2Fb"),
            pairs(&[("path", "a%2Fb")])
        );
        assert_eq!(
            vars("/v1/{a.b}/x/*:cancel", "/v1/7/x/anything:cancel"),
            pairs(&[("a.b", "7")])
        );
        assert_eq!(vars("/v1/{a.b}/x/*:cancel", "/v1/7/x/anything"), None);
        assert_eq!(vars("/static/**", "/static/css/site.css"), pairs(&[]));
        assert_eq!(
            vars("/x/{id}", "/x/a%2Fb"),
            pairs(&[("id", "a/b")]),
            "single-segment values decode everything"
        );
    }

    #[test]
    fn values_that_are_not_utf8_are_refused_not_decoded_lossily() {
        let t = Template::parse("/carts/{user_id}").unwrap();
        assert_eq!(t.matches("/carts/%FF%FE"), Some(Err("%FF%FE".to_string())));
        assert_eq!(t.matches("/carts/%FE%FF"), Some(Err("%FE%FF".to_string())));
        assert_eq!(
            t.matches("/carts/%C3%A9"),
            Some(Ok(vec![("user_id".to_string(), "é".to_string())])),
            "UTF-8 percent-encoded is fine"
        );
        let rest = Template::parse("/files/{path=**}").unwrap();
        assert_eq!(rest.matches("/files/a/%C0"), Some(Err("%C0".to_string())));
    }

    #[test]
    fn bad_templates_are_refused_and_specificity_orders() {
        for bad in [
            "",
            "carts",
            "/a/{b",
            "/a/{b={c}}",
            "/**/a",
            "/a/{}",
            "/a//b",
            "/a:",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let t = Template::parse("/v1/{name=shelves/*}/books/{book}:get").unwrap();
        assert_eq!(t.field_paths().collect::<Vec<_>>(), ["name", "book"]);
        let literal = Template::parse("/carts/special").unwrap();
        let variable = Template::parse("/carts/{id}").unwrap();
        assert!(literal.specificity() > variable.specificity());
    }
}

//! Server-side HTML: escaping and the page frame. Everything the console renders that did not
//! come from this file's literals (service names, entity keys, events: user data) goes through
//! [`escape`] or [`Html::text`], so a key like `<script>` shows as text.

use std::fmt::Write as _;

/// The console's stylesheet, embedded in the binary (served at [`STYLESHEET_PATH`]).
pub(crate) const STYLESHEET: &str = include_str!("console.css");
/// Where the stylesheet is served.
pub(crate) const STYLESHEET_PATH: &str = "/console/assets/console.css";
/// The console's icon (so browsers do not ask for `/favicon.ico`).
pub(crate) const ICON: &str = include_str!("icon.svg");
/// Where the icon is served.
pub(crate) const ICON_PATH: &str = "/console/assets/icon.svg";

/// `text` with the five HTML-special characters replaced by entities: safe in element content
/// and in double- or single-quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `value` percent-encoded for a query string component.
pub(crate) fn query_component(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// An HTML fragment under construction. Literal markup goes in with [`Html::raw`] (only ever
/// `&'static str` or markup this module built); data goes in with [`Html::text`].
#[derive(Debug, Default)]
pub(crate) struct Html(String);

impl Html {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Markup written by the console itself.
    pub(crate) fn raw(&mut self, markup: &str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Data, escaped.
    pub(crate) fn text(&mut self, text: impl std::fmt::Display) -> &mut Self {
        self.0.push_str(&escape(&text.to_string()));
        self
    }

    /// An element with escaped text content, e.g. `el("td", &key)`.
    pub(crate) fn el(&mut self, tag: &'static str, text: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.0, "<{tag}>");
        self.text(text);
        let _ = write!(self.0, "</{tag}>");
        self
    }

    /// A link whose path is the console's own and whose query values are data.
    pub(crate) fn link(
        &mut self,
        path: &'static str,
        query: &[(&str, &str)],
        text: impl std::fmt::Display,
    ) -> &mut Self {
        self.raw("<a href=\"")
            .raw(&escape(&href(path, query)))
            .raw("\">");
        self.text(text).raw("</a>")
    }

    /// A table: header cells, then rows of already-built cells (each a `<td>…</td>`).
    pub(crate) fn table(&mut self, id: &'static str, head: &[&str], rows: &[Html]) -> &mut Self {
        let _ = write!(self.0, "<table id=\"{id}\"><thead><tr>");
        for h in head {
            self.el("th", h);
        }
        self.raw("</tr></thead><tbody>");
        for row in rows {
            self.raw("<tr>").raw(&row.0).raw("</tr>");
        }
        if rows.is_empty() {
            let _ = write!(
                self.0,
                "<tr><td class=\"empty\" colspan=\"{}\">none</td></tr>",
                head.len()
            );
        }
        self.raw("</tbody></table>")
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// `path?k=v&…` with the values percent-encoded.
pub(crate) fn href(path: &str, query: &[(&str, &str)]) -> String {
    let mut out = path.to_string();
    for (i, (k, v)) in query.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        out.push_str(&query_component(v));
    }
    out
}

/// The pages of the navigation bar: (path, title).
pub(crate) const NAV: &[(&str, &str)] = &[
    ("/console", "Services"),
    ("/console/partitions", "Partitions"),
    ("/console/charts", "Throughput & latency"),
    ("/console/lag", "Lag"),
    ("/console/entity", "Entity inspector"),
];

/// A whole page: the frame (title, stylesheet, navigation with `current` marked) around `body`.
/// `refresh_s` adds a meta refresh (the charts page).
pub(crate) fn page(title: &str, current: &str, refresh_s: Option<u64>, body: &Html) -> String {
    let mut out = Html::new();
    out.raw("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    if let Some(s) = refresh_s {
        out.raw(&format!("<meta http-equiv=\"refresh\" content=\"{s}\">"));
    }
    out.raw("<title>")
        .text(title)
        .raw(" · Statehouse console</title>");
    out.raw("<link rel=\"icon\" type=\"image/svg+xml\" href=\"")
        .raw(ICON_PATH)
        .raw("\">");
    out.raw("<link rel=\"stylesheet\" href=\"")
        .raw(STYLESHEET_PATH)
        .raw("\"></head><body><header><span class=\"brand\">Statehouse</span><nav>");
    for (path, name) in NAV {
        let class = if *path == current {
            " class=\"current\""
        } else {
            ""
        };
        out.raw(&format!("<a href=\"{path}\"{class}>"))
            .text(name)
            .raw("</a>");
    }
    out.raw("</nav></header><main><h1>")
        .text(title)
        .raw("</h1>");
    out.raw(body.as_str());
    out.raw("</main></body></html>");
    out.into_string()
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub(crate) fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Unix milliseconds as `HH:MM:SS` UTC (chart axes).
pub(crate) fn utc_time(ms: i64) -> String {
    utc(ms)[11..].to_string()
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (eras of 400 years).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_escaped_everywhere() {
        assert_eq!(
            escape(r#"<script>alert("x&y")</script>'"#),
            "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;&#39;"
        );
        let mut h = Html::new();
        h.el("td", "<b>key</b>")
            .link("/console/entity", &[("key", "a&b\"<c>")], "<i>");
        assert_eq!(
            h.as_str(),
            "<td>&lt;b&gt;key&lt;/b&gt;</td><a href=\"/console/entity?key=a%26b%22%3Cc%3E\">&lt;i&gt;</a>"
        );
        let mut rows = vec![Html::new()];
        rows[0].el("td", "x'y");
        let mut t = Html::new();
        t.table("t", &["A<"], &rows);
        assert_eq!(
            t.as_str(),
            "<table id=\"t\"><thead><tr><th>A&lt;</th></tr></thead><tbody><tr><td>x&#39;y</td></tr></tbody></table>"
        );
        let mut empty = Html::new();
        empty.table("e", &["a", "b"], &[]);
        assert!(empty.as_str().contains("colspan=\"2\">none"));

        let mut body = Html::new();
        body.text("<img src=x onerror=alert(1)>");
        let rendered = page("T<itle>", "/console", None, &body);
        assert!(!rendered.contains("<img"), "{rendered}");
        assert!(rendered.contains("<title>T&lt;itle&gt; · Statehouse console</title>"));
        assert!(rendered.contains("<a href=\"/console\" class=\"current\">Services</a>"));
        assert!(!rendered.contains("http-equiv"));
        assert!(page("x", "", Some(5), &Html::new()).contains("content=\"5\""));
    }

    #[test]
    fn times_render_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_449_261_000), "2026-12-05 05:41:01");
        assert_eq!(utc_time(1_796_449_261_999), "05:41:01");
        assert_eq!(utc(-1000), "1969-12-31 23:59:59");
    }
}

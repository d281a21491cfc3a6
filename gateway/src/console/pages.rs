//! The console's routes: each page as HTML and as JSON (`/console/api/…`), from one view
//! struct per page so both always say the same.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use super::chart::{self, Chart, Series};
use super::html::{self, Html};
use super::sampler::Sample;
use super::{State, now_ms};

pub(crate) use super::inspection::Inspection;

type Shared = Arc<State>;

/// What the browser may load: the console's own stylesheet, nothing else; forms post only to
/// the console.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// Longest accepted query string or form body, bytes.
const MAX_INPUT: usize = 8 * 1024;

pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/console", get(services_page))
        .route("/console/", get(services_page))
        .route("/console/partitions", get(partitions_page))
        .route("/console/charts", get(charts_page))
        .route("/console/lag", get(lag_page))
        .route("/console/entity", get(entity_page))
        .route("/console/entity/erase", post(erase))
        .route("/console/api/services", get(services_api))
        .route("/console/api/partitions", get(partitions_api))
        .route("/console/api/charts", get(charts_api))
        .route("/console/api/lag", get(lag_api))
        .route("/console/api/entity", get(entity_api))
        .route(html::STYLESHEET_PATH, get(stylesheet))
        .route(html::ICON_PATH, get(icon))
        .route("/console/{*rest}", get(not_found).post(not_found))
        .with_state(state)
}

// --- requests and answers ---------------------------------------------------------------

/// A request the console refuses, with the status and a message for the person or script.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn html(&self, title: &str, current: &str) -> Response {
        let mut body = Html::new();
        body.raw("<p class=\"error\" id=\"error\">")
            .text(&self.message)
            .raw("</p>");
        with_status(
            self.status,
            html_response(html::page(title, current, None, &body)),
        )
    }

    fn json(&self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
        }
        with_status(
            self.status,
            json_response(&Body {
                error: &self.message,
            }),
        )
    }
}

/// The `application/x-www-form-urlencoded` pairs of a query string or form body.
pub(crate) fn form_pairs(raw: &str) -> Result<Vec<(String, String)>, Refusal> {
    if raw.len() > MAX_INPUT {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request's parameters are longer than {MAX_INPUT} bytes"),
        ));
    }
    let decode = |s: &str| -> Result<String, Refusal> {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| Refusal::bad_request("a request parameter is not valid UTF-8"))
    };
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// The known parameters of a request; an unknown one is refused (a typo never goes unnoticed).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Params {
    pub(crate) service: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) reason: Option<String>,
}

pub(crate) fn params(raw: Option<&str>, allowed: &[&str]) -> Result<Params, Refusal> {
    let mut params = Params::default();
    for (k, v) in form_pairs(raw.unwrap_or(""))? {
        if !allowed.contains(&k.as_str()) {
            return Err(Refusal::bad_request(format!(
                "unknown parameter {k:?} (expected: {})",
                allowed.join(", ")
            )));
        }
        let v = Some(v).filter(|v| !v.is_empty());
        match k.as_str() {
            "service" => params.service = v,
            "key" => params.key = v,
            "token" => params.token = v,
            "reason" => params.reason = v,
            _ => {}
        }
    }
    Ok(params)
}

fn with_status(status: StatusCode, mut response: Response) -> Response {
    *response.status_mut() = status;
    response
}

fn html_response(page: String) -> Response {
    let mut response = page.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    secure(headers);
    response
}

fn json_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(body) => {
            let mut response = body.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            secure(response.headers_mut());
            response
        }
        Err(e) => Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).json(),
    }
}

fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        html::STYLESHEET,
    )
        .into_response()
}

async fn icon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        html::ICON,
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    let refusal = Refusal::new(
        StatusCode::NOT_FOUND,
        format!("no console page at {}", uri.path()),
    );
    if uri.path().starts_with("/console/api/") {
        refusal.json()
    } else {
        refusal.html("Not found", "")
    }
}

// --- services ----------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub(crate) struct ServiceView {
    pub(crate) name: String,
    pub(crate) updated_at_ms: i64,
    /// Partitions of its journal, once the gateway has learned the count.
    pub(crate) partitions: Option<u32>,
    /// Partitions with a known owner.
    pub(crate) owned_partitions: u32,
    pub(crate) grpc_services: Vec<GrpcServiceView>,
    pub(crate) processors: Vec<ProcessorView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct GrpcServiceView {
    pub(crate) name: String,
    pub(crate) entity_type: String,
    pub(crate) persistence_id: String,
    pub(crate) methods: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ProcessorView {
    pub(crate) processor_id: String,
    pub(crate) endpoint: String,
}

/// The Statehouse services the registry routes to, sorted.
pub(crate) fn service_names(state: &State) -> Vec<String> {
    let routes = state.registry.routes();
    let mut names: Vec<String> = routes
        .grpc_services()
        .filter_map(|g| routes.service_of(g).map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn services(state: &State) -> Vec<ServiceView> {
    service_names(state)
        .into_iter()
        .filter_map(|name| state.registry.service(&name))
        .map(|service| {
            let partitions = state.registry.partition_count(&service.name);
            let owned_partitions = (0..partitions.unwrap_or(0))
                .filter(|p| state.registry.owner(&service.name, *p).is_some())
                .count() as u32;
            let grpc_services = service
                .index
                .services()
                .map(|g| {
                    let entity = service.index.entity(g);
                    let mut methods: Vec<String> = service
                        .index
                        .methods()
                        .filter(|m| m.service == g)
                        .map(|m| m.name.clone())
                        .collect();
                    methods.sort();
                    GrpcServiceView {
                        name: g.to_string(),
                        entity_type: entity.map(|e| e.entity_type.clone()).unwrap_or_default(),
                        persistence_id: entity
                            .map(|e| e.persistence_id.clone())
                            .unwrap_or_default(),
                        methods,
                    }
                })
                .collect();
            ServiceView {
                partitions,
                owned_partitions,
                grpc_services,
                processors: service
                    .processors
                    .iter()
                    .map(|p| ProcessorView {
                        processor_id: p.processor_id.clone(),
                        endpoint: p.endpoint.clone(),
                    })
                    .collect(),
                updated_at_ms: service.updated_at_ms,
                name: service.name,
            }
        })
        .collect()
}

async fn services_api(Extract(state): Extract<Shared>) -> Response {
    json_response(&services(&state))
}

async fn services_page(Extract(state): Extract<Shared>) -> Response {
    let views = services(&state);
    let mut body = Html::new();
    body.raw("<p class=\"note\">Services from the registry (the services and routing topics).</p>");
    let rows: Vec<Html> = views
        .iter()
        .map(|s| {
            let mut row = Html::new();
            row.raw("<td>")
                .link("/console/partitions", &[("service", &s.name)], &s.name)
                .raw("</td><td>");
            for g in &s.grpc_services {
                row.raw("<div><code>")
                    .text(&g.name)
                    .raw("</code> <span class=\"muted\">");
                row.text(short_type(&g.entity_type));
                if !g.persistence_id.is_empty() {
                    row.raw(" · ").text(&g.persistence_id);
                }
                row.raw("</span><br><span class=\"muted\">")
                    .text(g.methods.join(", "))
                    .raw("</span></div>");
            }
            row.raw("</td><td>");
            for p in &s.processors {
                row.raw("<div><code>")
                    .text(&p.endpoint)
                    .raw("</code> <span class=\"muted\">");
                row.text(&p.processor_id).raw("</span></div>");
            }
            row.raw("</td><td class=\"num\">")
                .text(s.owned_partitions)
                .raw(" / ")
                .text(s.partitions.map_or("?".to_string(), |p| p.to_string()))
                .raw("</td>");
            row.el("td", html::utc(s.updated_at_ms));
            row
        })
        .collect();
    body.table(
        "services",
        &[
            "Service",
            "gRPC services (entity type · persistence id, methods)",
            "Processors",
            "Owned partitions",
            "Updated (UTC)",
        ],
        &rows,
    );
    html_response(html::page("Services", "/console", None, &body))
}

/// `cloudstate.eventsourced.EventSourced` → `EventSourced`.
fn short_type(entity_type: &str) -> &str {
    entity_type.rsplit('.').next().unwrap_or(entity_type)
}

// --- partitions ----------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub(crate) struct PartitionsView {
    pub(crate) service: String,
    pub(crate) partitions: Vec<PartitionView>,
    /// Why the journal ends and checkpoints are missing, if they are.
    pub(crate) inspection_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PartitionView {
    pub(crate) partition: u32,
    pub(crate) owner: Option<OwnerView>,
    /// The journal topic's end (the next offset to be written).
    pub(crate) journal_end: Option<i64>,
    /// How far the Cassandra backup holds the journal.
    pub(crate) backup_checkpoint: Option<i64>,
    /// Offsets of the journal and values partitions not yet in Cassandra (transaction markers
    /// included, so an idle partition may show a small lag until its next backup round).
    pub(crate) backup_lag: Option<i64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct OwnerView {
    pub(crate) processor_id: String,
    pub(crate) endpoint: String,
    pub(crate) epoch: i64,
}

fn known_service(state: &State, service: Option<String>) -> Result<String, Refusal> {
    let service =
        service.ok_or_else(|| Refusal::bad_request("the service parameter is missing"))?;
    if state.registry.service(&service).is_none() {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("service {service:?} is unknown to the registry"),
        ));
    }
    Ok(service)
}

async fn partitions(state: &State, service: String) -> PartitionsView {
    let ends = state.inspector.partitions(&service).await;
    let (ends, inspection_error) = match ends {
        Ok(ends) => (ends, None),
        Err(e) => (Default::default(), Some(e)),
    };
    let count = state
        .registry
        .partition_count(&service)
        .or_else(|| ends.keys().next_back().map(|p| p + 1))
        .unwrap_or(0);
    let partitions = (0..count)
        .map(|p| {
            let end = ends.get(&p);
            PartitionView {
                partition: p,
                owner: state.registry.owner(&service, p).map(|o| OwnerView {
                    processor_id: o.processor_id,
                    endpoint: o.endpoint,
                    epoch: o.epoch,
                }),
                journal_end: end.and_then(|e| e.journal_end),
                backup_checkpoint: end.and_then(|e| e.backup_checkpoint),
                backup_lag: end.and_then(|e| e.backup_lag),
            }
        })
        .collect();
    PartitionsView {
        service,
        partitions,
        inspection_error,
    }
}

async fn partitions_api(Extract(state): Extract<Shared>, RawQuery(q): RawQuery) -> Response {
    let service =
        match params(q.as_deref(), &["service"]).and_then(|p| known_service(&state, p.service)) {
            Ok(service) => service,
            Err(refusal) => return refusal.json(),
        };
    json_response(&partitions(&state, service).await)
}

async fn partitions_page(Extract(state): Extract<Shared>, RawQuery(q): RawQuery) -> Response {
    const TITLE: &str = "Partitions";
    const PATH: &str = "/console/partitions";
    let params = match params(q.as_deref(), &["service"]) {
        Ok(p) => p,
        Err(refusal) => return refusal.html(TITLE, PATH),
    };
    let names = service_names(&state);
    let service = match params.service.or_else(|| names.first().cloned()) {
        None => {
            let mut body = Html::new();
            body.raw("<p class=\"note\">No service is registered yet.</p>");
            return html_response(html::page(TITLE, PATH, None, &body));
        }
        Some(s) => match known_service(&state, Some(s)) {
            Ok(s) => s,
            Err(refusal) => return refusal.html(TITLE, PATH),
        },
    };
    let view = partitions(&state, service).await;
    let mut body = Html::new();
    service_picker(&mut body, PATH, &names, Some(&view.service), None);
    if let Some(e) = &view.inspection_error {
        body.raw("<p class=\"error\">Journal ends and checkpoints unavailable: ")
            .text(e)
            .raw("</p>");
    }
    let rows: Vec<Html> = view
        .partitions
        .iter()
        .map(|p| {
            let mut row = Html::new();
            row.raw("<td class=\"num\">").text(p.partition).raw("</td>");
            match &p.owner {
                Some(o) => {
                    row.raw("<td><code>")
                        .text(&o.endpoint)
                        .raw("</code> <span class=\"muted\">");
                    row.text(&o.processor_id)
                        .raw("</span></td><td class=\"num\">");
                    row.text(o.epoch).raw("</td>");
                }
                None => {
                    row.raw("<td class=\"warn\">no owner</td><td></td>");
                }
            }
            for value in [p.journal_end, p.backup_checkpoint, p.backup_lag] {
                row.raw("<td class=\"num\">")
                    .text(value.map_or("–".to_string(), |v| v.to_string()))
                    .raw("</td>");
            }
            row
        })
        .collect();
    body.table(
        "partitions",
        &[
            "Partition",
            "Owner",
            "Epoch",
            "Journal end",
            "Backup checkpoint",
            "Backup lag (journal + values)",
        ],
        &rows,
    );
    html_response(html::page(TITLE, PATH, None, &body))
}

/// A GET form choosing the service (and, for the inspector, the entity key).
fn service_picker(
    body: &mut Html,
    action: &'static str,
    names: &[String],
    selected: Option<&str>,
    key: Option<&str>,
) {
    body.raw("<form class=\"search\" method=\"get\" action=\"")
        .raw(action)
        .raw("\"><label>Service<select name=\"service\" id=\"service\">");
    for name in names {
        let sel = if Some(name.as_str()) == selected {
            " selected"
        } else {
            ""
        };
        body.raw("<option value=\"")
            .text(name)
            .raw("\"")
            .raw(sel)
            .raw(">")
            .text(name)
            .raw("</option>");
    }
    body.raw("</select></label>");
    if let Some(key) = key {
        body.raw(
            "<label>Entity key<input type=\"search\" name=\"key\" id=\"key\" required value=\"",
        )
        .text(key)
        .raw("\"></label><button type=\"submit\" id=\"inspect\">Inspect</button>");
    } else {
        body.raw("<button type=\"submit\">Show</button>");
    }
    body.raw("</form>");
}

// --- charts --------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub(crate) struct ChartsView {
    pub(crate) interval_ms: u64,
    pub(crate) window_ms: u64,
    /// Oldest first.
    pub(crate) samples: Vec<Sample>,
}

fn charts(state: &State) -> ChartsView {
    let history = state.history.lock().unwrap_or_else(|e| e.into_inner());
    ChartsView {
        interval_ms: state.interval.as_millis() as u64,
        window_ms: state.window.as_millis() as u64,
        samples: history.iter().copied().collect(),
    }
}

async fn charts_api(Extract(state): Extract<Shared>) -> Response {
    json_response(&charts(&state))
}

async fn charts_page(Extract(state): Extract<Shared>) -> Response {
    let view = charts(&state);
    let end_ms = view
        .samples
        .last()
        .map_or_else(now_ms, |s| s.at_ms.max(now_ms()));
    let window_ms = view.window_ms as i64;
    let points = |f: fn(&Sample) -> Option<f64>| -> Vec<(i64, Option<f64>)> {
        view.samples.iter().map(|s| (s.at_ms, f(s))).collect()
    };
    let throughput = Chart {
        id: "throughput",
        title: "Gateway calls",
        unit: "calls/s",
        end_ms,
        window_ms,
        series: vec![
            Series {
                name: "all",
                color: "#2457c5",
                points: points(|s| Some(s.calls_per_s)),
            },
            Series {
                name: "not OK",
                color: "#b42318",
                points: points(|s| Some(s.errors_per_s)),
            },
        ],
    };
    let latency = Chart {
        id: "latency",
        title: "Gateway call latency",
        unit: "ms",
        end_ms,
        window_ms,
        series: vec![
            Series {
                name: "mean",
                color: "#067647",
                points: points(|s| s.mean_ms),
            },
            Series {
                name: "p99",
                color: "#b54708",
                points: points(|s| s.p99_ms),
            },
        ],
    };
    let mut body = Html::new();
    body.raw("<p class=\"note\">Sampled by this gateway every ")
        .text(format_duration(view.interval_ms))
        .raw(", the last ")
        .text(format_duration(view.window_ms))
        .raw(" kept in memory; ")
        .text(view.samples.len())
        .raw(" samples. The page reloads itself.</p>");
    if let Some(last) = view.samples.last() {
        body.raw("<p id=\"latest\">Latest: ")
            .text(format!("{:.1} calls/s", last.calls_per_s))
            .raw(", ")
            .text(format!("{:.1} not OK/s", last.errors_per_s))
            .raw(", mean ")
            .text(last.mean_ms.map_or("–".into(), |m| format!("{m:.2} ms")))
            .raw(", p99 ")
            .text(last.p99_ms.map_or("–".into(), |m| format!("{m:.2} ms")))
            .raw("</p>");
    }
    body.raw(&chart::render(&throughput));
    body.raw(&chart::render(&latency));
    let refresh = (view.interval_ms / 1000).max(5);
    html_response(html::page(
        "Throughput & latency",
        "/console/charts",
        Some(refresh),
        &body,
    ))
}

fn format_duration(ms: u64) -> String {
    match ms {
        ms if ms % 60_000 == 0 => format!("{} min", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{} s", ms / 1000),
        ms => format!("{ms} ms"),
    }
}

// --- lag -----------------------------------------------------------------------------------

async fn lag_api(Extract(state): Extract<Shared>) -> Response {
    let names = service_names(&state);
    json_response(&state.inspector.lag(&names).await)
}

async fn lag_page(Extract(state): Extract<Shared>) -> Response {
    let names = service_names(&state);
    let lag = state.inspector.lag(&names).await;
    let mut body = Html::new();
    body.raw("<p class=\"note\">Backup lag: offsets of the journal and values topics not yet in Cassandra. Projection lag: journal offsets a projection's serving generation has not read yet. Offsets count transaction markers too, so an idle service may show a small lag.</p>");
    let mut backup_rows = vec![];
    let mut projection_rows = vec![];
    for service in &lag {
        let mut row = Html::new();
        row.raw("<td>")
            .link(
                "/console/partitions",
                &[("service", &service.service)],
                &service.service,
            )
            .raw("</td>");
        match &service.error {
            Some(e) => {
                row.raw("<td colspan=\"3\" class=\"error\">")
                    .text(e)
                    .raw("</td>");
            }
            None => {
                for v in [service.backup_lag, service.backup_lag_max] {
                    row.raw("<td class=\"num\">")
                        .text(v.map_or("–".into(), |v| v.to_string()))
                        .raw("</td>");
                }
                row.raw("<td class=\"num\">")
                    .text(
                        service
                            .journal_end_total
                            .map_or("–".into(), |v| v.to_string()),
                    )
                    .raw("</td>");
            }
        }
        backup_rows.push(row);
        for p in &service.projections {
            let mut row = Html::new();
            row.el("td", &service.service)
                .el("td", &p.name)
                .raw("<td class=\"num\">")
                .text(p.generation)
                .raw("</td><td class=\"num\">")
                .text(p.lag.map_or("–".into(), |v| v.to_string()))
                .raw("</td><td class=\"num\">")
                .text(p.lag_max.map_or("–".into(), |v| v.to_string()))
                .raw("</td>");
            projection_rows.push(row);
        }
    }
    body.raw("<h2>Backup</h2>");
    body.table(
        "backup-lag",
        &[
            "Service",
            "Backup lag (offsets)",
            "Worst partition",
            "Journal end (all partitions)",
        ],
        &backup_rows,
    );
    body.raw("<h2>Projections</h2>");
    body.table(
        "projection-lag",
        &[
            "Service",
            "Projection",
            "Serving generation",
            "Lag (offsets)",
            "Worst partition",
        ],
        &projection_rows,
    );
    html_response(html::page("Lag", "/console/lag", None, &body))
}

// --- entity inspector ----------------------------------------------------------------------

async fn entity_api(Extract(state): Extract<Shared>, RawQuery(q): RawQuery) -> Response {
    let params = match params(q.as_deref(), &["service", "key"]) {
        Ok(p) => p,
        Err(refusal) => return refusal.json(),
    };
    let service = match known_service(&state, params.service) {
        Ok(s) => s,
        Err(refusal) => return refusal.json(),
    };
    let Some(key) = params.key else {
        return Refusal::bad_request("the key parameter is missing").json();
    };
    match state.inspector.entity(&service, &key).await {
        Ok(report) => json_response(&report),
        Err(refusal) => refusal.json(),
    }
}

async fn entity_page(Extract(state): Extract<Shared>, RawQuery(q): RawQuery) -> Response {
    const TITLE: &str = "Entity inspector";
    const PATH: &str = "/console/entity";
    let params = match params(q.as_deref(), &["service", "key"]) {
        Ok(p) => p,
        Err(refusal) => return refusal.html(TITLE, PATH),
    };
    let names = service_names(&state);
    let mut body = Html::new();
    service_picker(
        &mut body,
        PATH,
        &names,
        params.service.as_deref(),
        Some(params.key.as_deref().unwrap_or("")),
    );
    let (Some(service), Some(key)) = (params.service.clone(), params.key.clone()) else {
        if params.service.is_some() || params.key.is_some() {
            return Refusal::bad_request("give both a service and an entity key").html(TITLE, PATH);
        }
        body.raw("<p class=\"note\">Choose a service and give an entity key: its events (as JSON), snapshots and state are read from Kafka and Cassandra.</p>");
        return html_response(html::page(TITLE, PATH, None, &body));
    };
    let service = match known_service(&state, Some(service)) {
        Ok(s) => s,
        Err(refusal) => return refusal.html(TITLE, PATH),
    };
    let report = match state.inspector.entity(&service, &key).await {
        Ok(report) => report,
        Err(refusal) => return refusal.html(TITLE, PATH),
    };
    body.raw("<h2>")
        .text(&service)
        .raw(" / <code id=\"entity-key\">")
        .text(&key)
        .raw("</code></h2>");
    super::inspection::render_entity(&mut body, &report);
    if state.token.is_some() && matches!(report.kind, "event-sourced" | "value") {
        body.raw("<h2>Admin</h2><form class=\"search\" id=\"erase\" method=\"post\" action=\"/console/entity/erase\">");
        body.raw("<input type=\"hidden\" name=\"service\" value=\"")
            .text(&service)
            .raw("\"><input type=\"hidden\" name=\"key\" value=\"")
            .text(&key)
            .raw("\"><label>Reason (kept in the audit record)<input type=\"text\" name=\"reason\" required></label><label>Admin token<input type=\"password\" name=\"token\" autocomplete=\"off\" required></label><button class=\"danger\" type=\"submit\">Erase this entity</button></form>");
    }
    html_response(html::page(TITLE, PATH, None, &body))
}

/// `POST /console/entity/erase` (form: service, key, reason, token; or the token as
/// `Authorization: Bearer …`): the owner of the entity's partition erases it
/// (`statehouse_runtime::inspect::Inspector::erase`, the processor's `Processor/Erase`).
async fn erase(Extract(state): Extract<Shared>, headers: HeaderMap, body: String) -> Response {
    const TITLE: &str = "Erase an entity";
    const PATH: &str = "/console/entity";
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let refuse = |r: Refusal| {
        if wants_json {
            r.json()
        } else {
            r.html(TITLE, PATH)
        }
    };
    let Some(token) = &state.token else {
        return refuse(Refusal::new(
            StatusCode::FORBIDDEN,
            "the console is read-only: set gateway.console.admin-token-file to allow admin actions",
        ));
    };
    let params = match params(Some(&body), &["service", "key", "reason", "token"]) {
        Ok(p) => p,
        Err(r) => return refuse(r),
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .or(params.token.clone());
    if !given.as_deref().is_some_and(|g| token.matches(g)) {
        return refuse(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "a valid admin token is required",
        ));
    }
    let service = match known_service(&state, params.service) {
        Ok(s) => s,
        Err(r) => return refuse(r),
    };
    let Some(key) = params.key else {
        return refuse(Refusal::bad_request("the key parameter is missing"));
    };
    let Some(reason) = params.reason else {
        return refuse(Refusal::bad_request(
            "the reason parameter is missing (it is kept in the audit record)",
        ));
    };
    match state.inspector.erase(&service, &key, &reason).await {
        Ok(report) if wants_json => json_response(&report),
        Ok(report) => {
            tracing::info!(
                service,
                partition = report.partition,
                "entity erased through the web console"
            );
            let mut body = Html::new();
            body.raw("<p class=\"ok\" id=\"erased\">Erased ")
                .text(&key)
                .raw(" of ")
                .text(&service)
                .raw(
                    format!(
                        ": {} journal tombstones, {} journal rows and {} snapshot rows removed.",
                        report.journal_tombstones,
                        report.journal_rows_removed,
                        report.snapshot_rows_removed
                    )
                    .as_str(),
                )
                .raw("</p>");
            body.link(
                "/console/entity",
                &[("service", &service), ("key", &key)],
                "Inspect it again",
            );
            html_response(html::page(TITLE, PATH, None, &body))
        }
        Err(r) => refuse(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_decoded_and_checked() {
        let p = params(
            Some("service=shopping-cart&key=a%26b+c%3Cd%3E"),
            &["service", "key"],
        )
        .unwrap();
        assert_eq!(p.service.as_deref(), Some("shopping-cart"));
        assert_eq!(p.key.as_deref(), Some("a&b c<d>"));
        assert_eq!(params(None, &["service"]).unwrap(), Params::default());
        assert_eq!(
            params(Some("service="), &["service"]).unwrap().service,
            None
        );
        let unknown = params(Some("servce=x"), &["service"]).unwrap_err();
        assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
        assert!(
            unknown.message.contains("\"servce\""),
            "{}",
            unknown.message
        );
        let bad_utf8 = params(Some("key=%FF"), &["key"]).unwrap_err();
        assert_eq!(bad_utf8.status, StatusCode::BAD_REQUEST);
        let long = format!("key={}", "x".repeat(MAX_INPUT));
        assert_eq!(
            params(Some(&long), &["key"]).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(format_duration(900_000), "15 min");
        assert_eq!(format_duration(5_000), "5 s");
        assert_eq!(format_duration(1_500), "1500 ms");
        assert_eq!(
            short_type("cloudstate.eventsourced.EventSourced"),
            "EventSourced"
        );
    }

    /// The console over an empty registry, served on a real port: pages render, bad requests
    /// are 4xx with a message, and without a token file nothing is erased.
    #[tokio::test]
    async fn routes_answer_pages_json_and_clear_refusals() {
        use std::sync::Mutex;
        use std::time::Duration;

        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_util::sync::CancellationToken;

        use super::super::ring::Ring;

        let history = Arc::new(Mutex::new(Ring::new(4)));
        for (i, calls) in [3.0, 5.0].into_iter().enumerate() {
            history.lock().unwrap().push(Sample {
                at_ms: now_ms() - 1_000 * (2 - i as i64),
                calls_per_s: calls,
                errors_per_s: 0.0,
                mean_ms: Some(1.5),
                p99_ms: None,
            });
        }
        let config = statehouse_runtime::Config::default();
        let state = Arc::new(State {
            registry: statehouse_runtime::router::Registry::new(),
            history,
            window: Duration::from_secs(60),
            interval: Duration::from_secs(1),
            token: None,
            inspector: Inspection::new(&config),
        });
        let shutdown = CancellationToken::new();
        let (addr, task) = statehouse_runtime::admin_server::serve_with(
            "127.0.0.1:0".parse().unwrap(),
            statehouse_runtime::Health::new(),
            router(state),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let request = |method: &'static str, path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };

        let services = request("GET", "/console").await;
        assert!(services.starts_with("HTTP/1.1 200"), "{services}");
        assert!(
            services.contains("content-security-policy: default-src 'none'"),
            "{services}"
        );
        assert!(services.contains("<table id=\"services\">"), "{services}");
        assert!(services.contains("colspan=\"5\">none"), "{services}");
        let api = request("GET", "/console/api/services").await;
        assert!(
            api.contains("content-type: application/json") && api.ends_with("[]"),
            "{api}"
        );

        let charts = request("GET", "/console/charts").await;
        assert!(charts.contains("<svg id=\"throughput\""), "{charts}");
        assert!(charts.contains("<polyline"), "{charts}");
        assert!(charts.contains("Latest: 5.0 calls/s"), "{charts}");
        let api = request("GET", "/console/api/charts").await;
        assert!(api.contains("\"calls_per_s\": 5.0"), "{api}");

        let css = request("GET", "/console/assets/console.css").await;
        assert!(
            css.contains("text/css") && css.contains("svg.chart"),
            "{css}"
        );
        assert!(request("GET", "/healthz").await.starts_with("HTTP/1.1 200"));

        for (path, status, says) in [
            (
                "/console/api/partitions",
                "400",
                "service parameter is missing",
            ),
            (
                "/console/api/partitions?service=cart",
                "404",
                "unknown to the registry",
            ),
            (
                "/console/partitions?service=cart&x=1",
                "400",
                "unknown parameter",
            ),
            (
                "/console/api/entity?service=cart&key=%FF",
                "400",
                "not valid UTF-8",
            ),
            (
                "/console/nothing",
                "404",
                "no console page at /console/nothing",
            ),
        ] {
            let answer = request("GET", path).await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{path}: {answer}"
            );
            assert!(answer.contains(says), "{path}: {answer}");
        }
        let erase = request("POST", "/console/entity/erase").await;
        assert!(erase.starts_with("HTTP/1.1 403"), "{erase}");
        assert!(erase.contains("read-only"), "{erase}");
        let empty = request("GET", "/console/partitions").await;
        assert!(empty.contains("No service is registered yet."), "{empty}");

        shutdown.cancel();
        task.await.unwrap();
    }
}

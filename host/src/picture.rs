//! A split drawn as one self-contained HTML page (`netless plan --html`): the graph in topological
//! order coloured by stage, each function's memory budget against the limit, and the bytes crossing
//! every boundary. No scripts, no external files: it opens in any browser, offline.

use std::collections::HashMap;
use std::fmt::Write;

use crate::plan::dag::Body;
use crate::plan::partition::mib;
use crate::split::Split;

/// Height of one node's row in the graph, in pixels.
const ROW: usize = 18;
/// Width of the gutter where edges between distant nodes are drawn.
const GUTTER: usize = 150;

/// The page for `split`.
pub fn html(split: &Split) -> String {
    let plan = &split.plan;
    let limit = plan.request.max_memory;
    let mut page = String::new();
    let title = format!("{}: {} functions under {}", plan.model.name, plan.segments.len(), mib(limit));
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n<p>{} nodes, {} of weights; {} stages, estimated latency {:.1} ms, slowest stage {:.1} ms ({:.1} requests/s pipelined); objective {:?}, order {}.</p>\n",
        escape(&title),
        escape(&title),
        plan.model.nodes,
        mib(plan.model.weight_bytes),
        plan.stages.len(),
        plan.latency_seconds * 1e3,
        plan.slowest_stage_seconds * 1e3,
        1.0 / plan.slowest_stage_seconds.max(f64::MIN_POSITIVE),
        plan.request.objective,
        escape(&plan.order),
    );
    page.push_str(&budgets(split));
    page.push_str(&graph(split));
    page.push_str("</body></html>\n");
    page
}

/// One bar per function: weights, activations and the rest of its budget, against the limit.
fn budgets(split: &Split) -> String {
    let plan = &split.plan;
    let limit = plan.request.max_memory;
    let scale = plan.segments.iter().map(|s| s.estimated_memory).max().unwrap_or(0).max(limit) as f64;
    let pct = |bytes: u64| bytes as f64 / scale * 100.0;
    let mut out = format!(
        "<h2>Memory budgets</h2>\n<p class=\"legend\"><span class=\"weights\"></span>weights <span class=\"activations\"></span>peak activations <span class=\"overhead\"></span>runtime and the rest; the line is the limit, {}.</p>\n<div class=\"bars\">\n",
        mib(limit)
    );
    for s in &plan.segments {
        let activations = s.peak_activation_bytes.min(s.estimated_memory.saturating_sub(s.weight_bytes));
        let overhead = s.estimated_memory.saturating_sub(s.weight_bytes + activations);
        let label = match &s.shard {
            Some(shard) => format!("stage {} shard {}/{}", s.stage, shard.index, shard.count),
            None => format!("stage {}", s.stage),
        };
        let _ = writeln!(
            out,
            "<div class=\"segment\" data-index=\"{}\"><span class=\"name\" style=\"border-color:{}\">seg {} <small>{}</small></span><span class=\"bar\"><span class=\"weights\" style=\"width:{:.2}%\"></span><span class=\"activations\" style=\"width:{:.2}%\"></span><span class=\"overhead\" style=\"width:{:.2}%\"></span><span class=\"limit\" style=\"left:{:.2}%\"></span></span><span class=\"figure\">{} = {} + {} + {}</span></div>",
            s.index,
            colour(s.stage),
            s.index,
            label,
            pct(s.weight_bytes),
            pct(activations),
            pct(overhead),
            pct(limit),
            mib(s.estimated_memory),
            mib(s.weight_bytes),
            mib(activations),
            mib(overhead),
        );
    }
    out.push_str("</div>\n");
    out
}

/// The nodes top to bottom in the plan's order, coloured by stage, with edges between distant nodes
/// in the left gutter and a line at every boundary naming the bytes that cross it.
fn graph(split: &Split) -> String {
    let (graph, plan, order) = (&split.graph, &split.plan, &split.planned.live.order);
    let position: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &n)| (n, p)).collect();
    let mut stage_at = vec![None; order.len()];
    let mut ends: Vec<(usize, usize)> = Vec::new();
    let mut shards: HashMap<usize, usize> = HashMap::new();
    for unit in &split.units {
        match &unit.body {
            Body::Segment { start, end } => {
                (*start..*end).for_each(|p| stage_at[p] = Some(unit.stage));
                ends.push((*end, unit.stage));
            }
            Body::Shard { plan: group, .. } => {
                if let Some(&p) = position.get(&group.node) {
                    stage_at[p] = Some(unit.stage);
                    *shards.entry(p).or_default() += 1;
                    ends.push((p + 1, unit.stage));
                }
            }
        }
    }
    ends.sort_unstable();
    ends.dedup();
    let producer: HashMap<usize, usize> = order.iter().enumerate().flat_map(|(p, &n)| graph.nodes[n].outputs.iter().map(move |&t| (t, p))).collect();
    let height = order.len() * ROW + ROW;
    let mut out = format!(
        "<h2>Graph</h2>\n<p>{} nodes in the order the plan cuts; an arc joins a node to a distant input.</p>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"{height}\" font-family=\"monospace\" font-size=\"11\" xml:space=\"preserve\">\n",
        order.len()
    );
    for (q, &n) in order.iter().enumerate() {
        for &t in &graph.nodes[n].inputs {
            let Some(&p) = producer.get(&t) else { continue };
            if q > p + 1 {
                let (y0, y1) = (p * ROW + ROW / 2, q * ROW + ROW / 2);
                let bend = GUTTER.saturating_sub(8 + (q - p).min(140)).max(4);
                let _ = writeln!(out, "<path class=\"edge\" d=\"M{GUTTER},{y0} C{bend},{y0} {bend},{y1} {GUTTER},{y1}\"/>");
            }
        }
    }
    for (p, &n) in order.iter().enumerate() {
        let node = &graph.nodes[n];
        let y = p * ROW;
        let fill = stage_at[p].map_or("#ddd".to_string(), colour);
        let cut = shards.get(&p).map(|k| format!(" [cut into {k} shards]")).unwrap_or_default();
        let _ = writeln!(
            out,
            "<g class=\"node\"><title>{} ({}), stage {}{}</title><rect x=\"{GUTTER}\" y=\"{}\" width=\"740\" height=\"{}\" rx=\"3\" fill=\"{fill}\"/><text x=\"{}\" y=\"{}\">{:<18} {}{}</text></g>",
            escape(&node.name),
            escape(&node.op_type),
            stage_at[p].map_or("?".into(), |s| s.to_string()),
            escape(&cut),
            y + 1,
            ROW - 2,
            GUTTER + 6,
            y + ROW - 5,
            escape(&node.op_type),
            escape(&node.name),
            escape(&cut),
        );
    }
    for &(end, stage) in &ends {
        let Some(boundary) = plan.boundaries.iter().find(|b| b.after_stage == stage) else { continue };
        if end >= order.len() {
            continue;
        }
        let y = end * ROW;
        let _ = writeln!(
            out,
            "<g class=\"boundary\"><line x1=\"{GUTTER}\" y1=\"{y}\" x2=\"890\" y2=\"{y}\"/><text x=\"700\" y=\"{}\">{} bytes, {} tensors</text></g>",
            y - 2,
            boundary.bytes,
            boundary.tensors.len()
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A stage's colour: hues a golden angle apart, so neighbouring stages differ.
fn colour(stage: usize) -> String {
    format!("hsl({:.0}, 65%, 78%)", (stage as f64 * 137.508) % 360.0)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}\
.bars{display:flex;flex-direction:column;gap:4px;max-width:1100px}.segment{display:flex;align-items:center;gap:8px}\
.name{width:190px;border-left:8px solid;padding-left:6px}.bar{position:relative;flex:1;height:16px;background:#f3f3f3;display:flex}\
.limit{position:absolute;top:-3px;bottom:-3px;border-left:2px dashed #c00}.figure{width:330px;font-size:.85em;color:#555}\
.weights{background:#4e79a7}.activations{background:#f28e2b}.overhead{background:#bab0ac}\
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}\
.edge{fill:none;stroke:#999;stroke-width:1}.boundary line{stroke:#c00;stroke-width:2}.boundary text{fill:#c00}";

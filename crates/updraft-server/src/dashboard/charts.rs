//! Charts as inline SVG, drawn on the server: horizontal bars, each labelled with its count (the
//! numbers are in the markup, for screen readers and for tests, not only in the bar lengths).

use maud::{Markup, html};

/// One bar: its label, its count, and a CSS class for its colour.
pub(crate) struct Bar {
    pub label: String,
    pub count: u64,
    pub class: String,
}

/// A horizontal bar chart named `name` (`data-chart`), bars scaled to the largest count.
pub(crate) fn bars(name: &str, title: &str, bars: &[Bar]) -> Markup {
    const ROW: u64 = 26;
    const WIDTH: u64 = 420;
    const LABEL: u64 = 150;
    let max = bars.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    let height = ROW * bars.len().max(1) as u64;
    html! {
        figure.chart data-chart=(name) {
            figcaption { (title) }
            @if bars.is_empty() {
                p.empty { "Nothing yet." }
            } @else {
                svg role="img" aria-label=(title) viewBox={ "0 0 " (WIDTH + 60) " " (height) }
                    width="100%" preserveAspectRatio="xMinYMin meet" {
                    @for (i, bar) in bars.iter().enumerate() {
                        @let y = i as u64 * ROW;
                        @let length = (bar.count * (WIDTH - LABEL) / max).max(u64::from(bar.count > 0));
                        g data-label=(bar.label) data-count=(bar.count) {
                            text x="0" y=(y + 17) class="label" { (bar.label) }
                            rect x=(LABEL) y=(y + 4) width=(length) height=(ROW - 8) rx="3"
                                class=(bar.class) {}
                            text x=(LABEL + length + 6) y=(y + 17) class="count" { (bar.count) }
                        }
                    }
                }
            }
        }
    }
}

/// A progress bar for `done` of `total` (a `<progress>` element, which browsers and screen
/// readers both understand), with its text.
pub(crate) fn progress(done: u64, total: u64, text: &str) -> Markup {
    html! {
        span.progress {
            progress max=(total.max(1)) value=(done.min(total)) {}
            " " (text)
        }
    }
}

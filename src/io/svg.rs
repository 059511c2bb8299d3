//! The SVG module every picture is drawn with: the learning curves and the run that drew them
//! (`io::metrics`), the plan chart (`plan::report`) and the sweep chart (`cmd::plan`). It holds
//! what they share: the document's opening tag (namespace, size, font), background, `<desc>` and
//! end, the points of a line, text escaped for XML, and round axis steps.

/// The namespace every picture declares.
const NAMESPACE: &str = "http://www.w3.org/2000/svg";

/// What ends a picture.
pub const CLOSE: &str = "</svg>";

/// The opening `<svg>` tag: the namespace, then `size` (the [`size`] and [`view_box`]
/// attributes in the order the picture puts them), then the font all text is drawn in.
pub fn open(size: &str) -> String {
    format!(r#"<svg xmlns="{NAMESPACE}" {size} font-family="sans-serif" font-size="12">"#)
}

/// The `width` and `height` attributes of a `w` by `h` picture.
pub fn size(w: f64, h: f64) -> String {
    format!(r#"width="{w}" height="{h}""#)
}

/// The `viewBox` attribute of a `w` by `h` picture, which lets a viewer scale it.
pub fn view_box(w: f64, h: f64) -> String {
    format!(r#"viewBox="0 0 {w} {h}""#)
}

/// A white `w` by `h` background, so a picture reads the same on a dark page.
pub fn background(w: f64, h: f64) -> String {
    format!(r#"<rect width="{w}" height="{h}" fill="white"/>"#)
}

/// A point of a line (`<polyline>` points, `<path>` data) as `x,y`, to a tenth of a unit.
pub fn point(x: f64, y: f64) -> String {
    format!("{x:.1},{y:.1}")
}

/// A `<desc>` element holding `text` (escaped): said to whoever reads the file, never drawn.
pub fn desc(text: &str) -> String {
    format!("<desc>{}</desc>", escape(text))
}

/// `text` made safe inside an XML element or attribute: the five special characters escaped and
/// control characters (not allowed in XML 1.0 at all) replaced by spaces.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A round step (1, 2 or 5 times a power of ten) giving about `target` intervals over `range`;
/// 1 for an empty or non-finite range.
pub fn nice_step(range: f64, target: f64) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / target;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_parts_read_as_svg() {
        assert_eq!(
            open(&format!("{} {}", size(900.0, 400.5), view_box(900.0, 400.5))),
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="900" height="400.5" viewBox="0 0 900 400.5" font-family="sans-serif" font-size="12">"#
        );
        assert_eq!(background(720.0, 420.0), r#"<rect width="720" height="420" fill="white"/>"#);
        assert_eq!(desc("a <b>"), "<desc>a &lt;b&gt;</desc>");
        assert_eq!(point(1.0, 2.26), "1.0,2.3");
    }

    #[test]
    fn escapes_specials_and_control_characters() {
        assert_eq!(escape("a<b & \"c\" 'd'>\u{1}"), "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt; ");
    }

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(0.3, 3.0), 0.1);
        assert_eq!(nice_step(700.0, 4.0), 200.0);
        assert_eq!(nice_step(0.0, 4.0), 1.0);
        assert_eq!(nice_step(f64::NAN, 4.0), 1.0);
    }
}

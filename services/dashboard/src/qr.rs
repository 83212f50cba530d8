//! QR codes drawn on the server, as SVG, so the page needs no script to show one.

use qrcode::QrCode;
use qrcode::render::svg;

/// `code` (what WhatsApp gave to scan) as an inline SVG element; none when it is too long to be
/// a QR code.
pub fn svg(code: &str) -> Option<String> {
    let qr = QrCode::new(code.as_bytes()).ok()?;
    let image = qr
        .render::<svg::Color>()
        .min_dimensions(232, 232)
        .quiet_zone(true)
        .build();
    // Inline in HTML: the element alone, without the XML declaration.
    let start = image.find("<svg")?;
    Some(image[start..].to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_code_becomes_an_svg_element() {
        let image = super::svg("2@abc,def,ghi==").unwrap();
        assert!(image.starts_with("<svg"), "{image}");
        assert!(image.contains("<path"), "{image}");
        assert_ne!(image, super::svg("2@another").unwrap());
    }
}

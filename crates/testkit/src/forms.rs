//! The multipart form of `POST /v1/detect`, as a camera client sends it, built once for every
//! test that posts frames (to `serve`, a worker or the gateway).

use reqwest::blocking::multipart::{Form, Part};

/// An `image` part (named `frame.jpg`, whatever the bytes are), one `question` field per
/// question and one `behavior` field per behaviour, in that order.
pub fn detect_form(image: &[u8], questions: &[&str], behaviors: &[&str]) -> Form {
    let mut form = Form::new().part("image", Part::bytes(image.to_vec()).file_name("frame.jpg"));
    for q in questions {
        form = form.text("question", q.to_string());
    }
    for b in behaviors {
        form = form.text("behavior", b.to_string());
    }
    form
}

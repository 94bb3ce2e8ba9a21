//! The portal's HTML: minijinja templates (HTML auto-escaped), the defaults
//! compiled in, each replaceable by a file of the same name in the configured
//! `templates_dir` so the pages can carry a site's branding. They are read
//! and compiled with the rest of the configuration, so a reload picks up
//! edited files and requests never touch the disk for them.

use std::path::Path;

use minijinja::Environment;

const DEFAULTS: [(&str, &str); 9] = [
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("register.html", include_str!("templates/register.html")),
    ("message.html", include_str!("templates/message.html")),
    (
        "reset_request.html",
        include_str!("templates/reset_request.html"),
    ),
    (
        "reset_confirm.html",
        include_str!("templates/reset_confirm.html"),
    ),
    ("account.html", include_str!("templates/account.html")),
    (
        "verify_confirm.html",
        include_str!("templates/verify_confirm.html"),
    ),
    (
        "email_confirm.html",
        include_str!("templates/email_confirm.html"),
    ),
];

pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Loads the defaults, overridden by same-named files in `dir`; an
    /// error names the file that could not be read or compiled.
    pub fn load(dir: Option<&Path>) -> Result<Templates, String> {
        let mut env = Environment::new();
        for (name, default) in DEFAULTS {
            match dir.map(|d| d.join(name)).filter(|p| p.is_file()) {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read template {}: {e}", path.display()))?;
                    env.add_template_owned(name, text)
                        .map_err(|e| format!("template {}: {e}", path.display()))?;
                }
                None => env
                    .add_template(name, default)
                    .map_err(|e| format!("built-in template {name}: {e}"))?,
            }
        }
        Ok(Templates { env })
    }

    /// No templates at all: the stand-in of a configuration that was
    /// refused, which is never served.
    pub fn none() -> Templates {
        Templates {
            env: Environment::new(),
        }
    }

    pub fn render(&self, name: &str, context: minijinja::Value) -> Result<String, String> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(context))
            .map_err(|e| format!("rendering {name}: {e}"))
    }
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let t = Templates::load(None).unwrap();
        let html = t
            .render(
                "message.html",
                minijinja::context! { site_name => "S", heading => "<script>x</script>", text => "\"a\" & b" },
            )
            .unwrap();
        assert!(html.contains("&lt;script&gt;x"));
        assert!(!html.contains("<script>x"));
    }
}

//! Driving the web console in headless Chromium (Debian's `chromium` and `chromium-driver`)
//! over WebDriver with `fantoccini`: open a page of the console, sign in as a person would,
//! wait for what a person would see, and save screenshots under the target directory
//! (`<target>/console-screenshots/`).

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use ledgerline_tests::ChromeDriver;
use serde_json::Value;

/// One browser at a time: Chromium is the heaviest thing these tests run, and the live-tail
/// test measures how soon an event shows, which a second browser starting on the same two
/// cores would distort.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// `<target>/console-screenshots`: the test binary is `<target>/<profile>/deps/<name>`.
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Browser {
    pub client: Client,
    /// `http://127.0.0.1:<port>` of the API serving the console.
    pub base: String,
    test: String,
    _driver: ChromeDriver,
}

impl Browser {
    /// A laptop-sized window (1366×900) on the console at `base`.
    pub async fn open(base: &str, test: &str) -> Browser {
        Self::open_sized(base, test, 1366, 900).await
    }

    pub async fn open_sized(base: &str, test: &str, width: u32, height: u32) -> Browser {
        let driver = ChromeDriver::start().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), "chrome".into());
        capabilities.insert(
            "goog:chromeOptions".into(),
            driver.chrome_options(width, height).unwrap(),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&driver.url())
            .await
            .unwrap_or_else(|error| panic!("chromium did not start under chromedriver: {error}"));
        Browser {
            client,
            base: base.to_owned(),
            test: test.to_owned(),
            _driver: driver,
        }
    }

    /// Goes to a console page: `hash` is `#/explore?…` and the like.
    pub async fn goto(&self, hash: &str) {
        self.client
            .goto(&format!("{}/{hash}", self.base))
            .await
            .unwrap();
    }

    /// Signs in through the form, as a person would, and waits for the role in the header.
    pub async fn sign_in(&self, key: &str) -> String {
        // A fresh page load, so the form found below is the one that is shown (a hash change
        // alone redraws the page after this could find the old form).
        self.client.goto("about:blank").await.unwrap();
        self.goto("#/signin").await;
        let input = self
            .client
            .wait()
            .for_element(Locator::Id("api-key"))
            .await
            .unwrap();
        input.send_keys(key).await.unwrap();
        self.click("form.signin button[type=submit]").await;
        let role = self
            .wait_js(
                "the role in the header after signing in",
                "const role = document.getElementById('role'); return role && role.textContent;",
                Duration::from_secs(20),
            )
            .await;
        role.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `body` (a function body with `return`) in the page.
    pub async fn js(&self, body: &str) -> Value {
        self.client.execute(body, Vec::new()).await.unwrap()
    }

    /// Polls `body` until it returns something truthy (not null, false, "", 0 or []), and
    /// returns that. On timeout, saves a screenshot and fails naming `what`.
    pub async fn wait_js(&self, what: &str, body: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.js(body).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::Array(a) => !a.is_empty(),
                Value::Object(_) => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                let shot = self.screenshot(&format!("{}-failed", self.test)).await;
                let text = self
                    .js("return document.body.innerText.slice(0, 3000);")
                    .await;
                panic!(
                    "waited {timeout:?} for {what}; screenshot {}; the page said:\n{}",
                    shot.display(),
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no `{css}` to click: {error}"))
            .click()
            .await
            .unwrap();
    }

    /// Replaces the text of the input `css` with `text`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let input = self.client.find(Locator::Css(css)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// The names shown in the events table, top to bottom.
    pub async fn table_names(&self) -> Vec<String> {
        let names = self
            .js("return [...document.querySelectorAll('tr.event-row .event-name')].map(e => e.textContent);")
            .await;
        serde_json::from_value(names).unwrap_or_default()
    }

    /// Saves a PNG of the window as `<name>.png` under [`screenshot_dir`].
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let path = screenshot_dir().join(format!("{name}.png"));
        match self.client.screenshot().await {
            Ok(png) => std::fs::write(&path, png).unwrap(),
            Err(error) => eprintln!("screenshot {name} failed: {error}"),
        }
        path
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

//! The harness's own checks: the strict OpenMetrics reader refuses what a
//! scraper would, and the test databases' URLs.

mod support;

use support::openmetrics::parse;
use support::pg::with_database;

const GOOD: &str = "# HELP a_seconds A.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\n\
    a_seconds_sum{r=\"/p/{id}\"} 0.5\na_seconds_count{r=\"/p/{id}\"} 2\n\
    a_seconds_bucket{le=\"0.1\",r=\"/p/{id}\"} 1\na_seconds_bucket{le=\"+Inf\",r=\"/p/{id}\"} 2\n\
    # HELP b B.\n# TYPE b counter\nb_total{k=\"q\\\"x\"} 3\n# EOF\n";

#[test]
fn reads_good_text() {
    let read = parse(GOOD).unwrap();
    assert_eq!(read.value("b_total{k=\"q\\\"x\"}"), Some(3.0));
    assert_eq!(read.value("a_seconds_count{r=\"/p/{id}\"}"), Some(2.0));
    assert_eq!(read.named("a_seconds_bucket").count(), 2);
    assert_eq!(read.types["b"], "counter");
}

#[test]
fn refuses_what_a_scraper_would() {
    let broken = [
        (GOOD.replace("# EOF\n", ""), "EOF"),
        (GOOD.replace("b_total", "c_total"), "outside its family"),
        (GOOD.replace("b_total", "b_count"), "suffix"),
        (GOOD.replace("{k=\"q\\\"x\"}", "{k=q}"), "not quoted"),
        (GOOD.replace(" 3\n", " three\n"), "not a number"),
        (GOOD.replace("} 3\n", "} -3\n"), "negative"),
        (
            GOOD.replace("_count{r=\"/p/{id}\"} 2", "_count{r=\"/p/{id}\"} 5"),
            "_count",
        ),
        (
            GOOD.replace("le=\"0.1\",r=\"/p/{id}\"} 1", "le=\"0.1\",r=\"/p/{id}\"} 3"),
            "cumulative",
        ),
        (
            GOOD.replace("# UNIT a_seconds seconds", "# UNIT a_seconds bytes"),
            "unit",
        ),
        (
            format!(
                "{}b_total{{k=\"z\"}} 1\n# EOF\n",
                GOOD.replace("# EOF\n", "# HELP a_seconds again\n")
            ),
            "twice",
        ),
        (GOOD.replace("# TYPE b counter\n", ""), "no TYPE"),
        (
            GOOD.replace("b_total{k=\"q\\\"x\"} 3", "b_total{k=\"1\",k=\"2\"} 3"),
            "repeated",
        ),
    ];
    for (text, problem) in broken {
        let error = parse(&text).expect_err(problem);
        assert!(error.contains(problem), "{problem}: {error}");
    }
}

#[test]
fn with_database_replaces_only_the_database() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "pl_1"),
        "postgres://postgres@127.0.0.1:5432/pl_1"
    );
    assert_eq!(
        with_database("postgresql://u:p@h/db?sslmode=disable", "x"),
        "postgresql://u:p@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
}

"""The directive loader: the real chain loads, and each kind of mistake names file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main
from pipelines.directives import impact, load_directives
from pipelines.errors import CrmError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A writable copy of the real directives."""
    root = tmp_path / "directives"
    shutil.copytree(REPO / "directives", root)
    return root


def _edit(path: Path, change) -> None:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _load(root: Path):
    return load_directives(root, REPO / "schemas")


def test_real_chain_loads(directives):
    strategic = directives.only("strategic").directive
    functional = directives.only("functional").directive
    operational = directives.only("operational").directive
    assert functional.serves == strategic.id
    assert operational.serves == functional.id
    assert set(operational.sources) == {"web", "social", "log", "transaction", "ticket"}
    assert set(directives.schemas) == set(operational.sources)


def test_unknown_key_names_file_and_key(tree: Path):
    path = tree / "functional" / "customer_metrics.yaml"
    _edit(path, lambda d: d["parameters"][0].update(windw_days=7))
    with pytest.raises(CrmError) as err:
        _load(tree)
    assert str(path) in str(err.value)
    assert "parameters.0.windw_days: unknown key" in str(err.value)


def test_dangling_serves_is_refused(tree: Path):
    path = tree / "operational" / "ingest_events.yaml"
    _edit(path, lambda d: d.update(serves="functional.nowhere"))
    with pytest.raises(CrmError, match=r"ingest_events.yaml: serves: 'functional.nowhere' is not a known functional directive"):
        _load(tree)


def test_directive_serving_nothing_is_refused(tree: Path):
    path = tree / "functional" / "customer_metrics.yaml"
    _edit(path, lambda d: d.pop("serves"))
    with pytest.raises(CrmError, match=r"customer_metrics.yaml: serves: a functional directive must name"):
        _load(tree)


def test_kpi_using_unknown_parameter_is_refused(tree: Path):
    path = tree / "strategic" / "customer_value.yaml"
    _edit(path, lambda d: d["kpis"][0]["uses"].append("lifetime_magic"))
    with pytest.raises(CrmError, match=r"kpis\[0\] \(customer_lifetime_value\): uses: 'lifetime_magic'"):
        _load(tree)


def test_parameter_on_unknown_source_is_refused(tree: Path):
    path = tree / "functional" / "customer_metrics.yaml"
    _edit(path, lambda d: d["parameters"][0].update(source="fax"))
    with pytest.raises(CrmError, match=r"parameters\[0\] \(email_key\): source: 'fax'"):
        _load(tree)


def test_expectation_on_unknown_column_is_refused(tree: Path):
    path = tree / "operational" / "ingest_events.yaml"
    _edit(path, lambda d: d["sources"]["web"]["expectations"][0]["kwargs"].update(column="sesion_id"))
    with pytest.raises(CrmError, match=r"sources.web.expectations\[0\] \(web_session_present\): kwargs: column 'sesion_id' is not a field"):
        _load(tree)


def test_unknown_action_names_file_and_rule(tree: Path):
    path = tree / "operational" / "ingest_events.yaml"
    _edit(path, lambda d: d["sources"]["web"]["expectations"][1].update(action="shrug"))
    with pytest.raises(CrmError) as err:
        _load(tree)
    assert str(path) in str(err.value)
    assert "sources.web.expectations.1.action (web_event_type_known): Input should be 'warn', 'quarantine' or 'fail'" in str(err.value)


def test_defaults_are_merged_into_each_rule_and_rules_win(tree: Path):
    path = tree / "operational" / "ingest_events.yaml"

    def change(d):
        d["defaults"] = {"action": "warn", "protects": ["web_sessions_30d"]}
        rules = d["sources"]["web"]["expectations"]
        del rules[0]["protects"]  # its action comes from the shipped defaults
        rules[1]["action"] = "fail"

    _edit(path, change)
    web = _load(tree).only("operational").directive.sources["web"].expectations
    assert (web[0].action, web[0].protects) == ("warn", ["web_sessions_30d"])
    assert web[1].action == "fail"


def test_rule_without_action_or_defaults_is_refused(tree: Path):
    path = tree / "operational" / "ingest_events.yaml"
    _edit(path, lambda d: d.pop("defaults"))
    with pytest.raises(CrmError, match=r"sources.web.expectations.0.action \(web_session_present\): missing required key"):
        _load(tree)


def test_source_without_known_producers_is_refused(tree: Path):
    path = tree / "operational" / "ingest_events.yaml"
    _edit(path, lambda d: d["sources"]["log"]["trust"].update(producers=[]))
    with pytest.raises(CrmError, match=r"sources.log.trust.producers: List should have at least 1 item"):
        _load(tree)


def test_unreadable_file_is_refused(tree: Path):
    path = tree / "strategic" / "customer_value.yaml"
    path.write_bytes(b"\xff\xfe not utf-8 \xff")
    with pytest.raises(CrmError, match=r"customer_value.yaml: cannot read directive"):
        _load(tree)


def test_invalid_yaml_gives_line(tree: Path):
    path = tree / "strategic" / "customer_value.yaml"
    path.write_text("id: strategic.x\nkpis: [unclosed\n")
    with pytest.raises(CrmError, match=r"customer_value.yaml: not valid YAML at line"):
        _load(tree)


def test_cli_check_exits_non_zero_with_one_line(tree: Path, monkeypatch, capsys):
    _edit(tree / "functional" / "customer_metrics.yaml", lambda d: d.update(owner="me"))
    import pipelines.config as config

    real = config.load_profile

    def with_tree(name="local"):
        return real(name).model_copy(update={"directives": tree})

    monkeypatch.setattr("pipelines.cli.load_profile", with_tree)
    assert main(["directives", "check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("crm: error: ") and "owner: unknown key" in err[0]


def test_a_job_whose_expectation_does_not_compile_reads_and_writes_nothing(tree: Path, spark, tmp_path: Path, monkeypatch, capsys):
    # The expectations compile on a thread while Spark starts; the job waits for them.
    _edit(tree / "operational" / "ingest_events.yaml", lambda d: d["sources"]["web"]["expectations"][0].update(type="expect_it_to_be_pretty"))
    import pipelines.config as config

    real = config.load_profile
    lakehouse = tmp_path / "lakehouse"

    def with_tree(name="local"):
        return real(name).model_copy(update={"directives": tree, "lakehouse": lakehouse, "checkpoints": tmp_path / "checkpoints"})

    monkeypatch.setattr("pipelines.cli.load_profile", with_tree)
    for job in ("functional", "strategic"):
        assert main([job]) == 1
        err = capsys.readouterr().err
        assert "'expect_it_to_be_pretty' is not a Great Expectations expectation type" in err
    assert not lakehouse.exists()


def test_cli_plan_prints_the_chain(capsys):
    assert main(["directives", "plan"]) == 0
    out = capsys.readouterr().out
    assert out.index("strategic.customer_value") < out.index("functional.customer_metrics") < out.index("operational.ingest_events")
    assert "KPI customer_lifetime_value" in out and "topic crm.transaction" in out


def test_impact_follows_parameters_through_the_purchase_model_to_the_kpis(directives, capsys):
    # The currency rule protects the spend parameters; only the model's clv reads them now.
    found = impact(directives, "transaction_currency_known")
    assert found.parameters == ["monetary_sum_90d", "repeat_spend_avg"]
    assert found.kpis == [("strategic.customer_value", "customer_lifetime_value")]
    # A whole topic: every KPI over one of the source's parameters, p_alive through recency and age.
    kpis = {kpi for _, kpi in impact(directives, "crm.transaction").kpis}
    assert {"customer_lifetime_value", "expected_active_share", "repeat_purchase_rate", "active_customer_share"} == kpis
    assert main(["directives", "impact", "crm.social"]) == 0
    out = capsys.readouterr().out
    assert "KPI at risk: complaining_customer_share" in out
    # Breakdowns that read the source, and recommendation rules over its parameters.
    assert "breakdown at risk: by_complaint_reason (functional.customer_metrics)" in out
    assert "recommendation rule at risk: complaint_follow_up (strategic.customer_value)" in out
    social = impact(directives, "social")
    assert {b for _, b in social.breakdowns} == {
        b.name for b in directives.only("functional").directive.breakdowns if any(p.source == "social" for p in b.parameters)
    }
    assert "cross_sell_candidate" in {r for _, r in social.rules}  # complaints_30d
    # The currency rule protects monetary_sum_90d, which two of these rules read, and the
    # spend the purchase model's clv comes from, which the third reads.
    assert {r for _, r in found.rules} == {"valuable_customer_at_risk", "complaint_follow_up", "breached_ticket_follow_up"}
    assert found.breakdowns == []  # it protects no breakdown's parameter
    with pytest.raises(CrmError, match="'fax' is neither an expectation nor a topic"):
        impact(directives, "fax")


def test_lifecycle_of_a_field_that_is_no_time_is_refused(tree: Path):
    path = tree / "operational" / "ingest_events.yaml"
    _edit(path, lambda d: d["sources"]["ticket"]["datafy"]["lifecycle"].update(opened="subject"))
    with pytest.raises(CrmError, match=r"sources.ticket.datafy.lifecycle.opened: 'subject' is not a timestamp field of ticket.v1"):
        _load(tree)


def test_latest_per_names_a_column_of_the_source(tree: Path):
    path = tree / "functional" / "customer_metrics.yaml"
    _edit(path, lambda d: next(p for p in d["parameters"] if p["name"] == "open_tickets").update(latest_per="ticket"))
    with pytest.raises(CrmError, match=r"\(open_tickets\): latest_per: 'ticket' is not a column of ticket.v1's silver table"):
        _load(tree)


def test_impact_of_the_ticket_source_reaches_service_kpis_and_follow_ups(directives):
    found = impact(directives, "crm.ticket")
    assert {kpi for _, kpi in found.kpis} == {"service_satisfaction"}
    assert {r for _, r in found.rules} == {"breached_ticket_follow_up"}
    assert {b for _, b in found.breakdowns} == {"by_complaint_reason"}


def test_log_layout_without_content_is_refused(tree: Path):
    path = tree / "operational" / "ingest_events.yaml"
    _edit(path, lambda d: d["sources"]["log"]["datafy"]["logs"].update(layout="<Date> <Time> <Level>"))
    with pytest.raises(CrmError, match=r"sources.log.datafy.logs.layout: .*has no <Content> field"):
        _load(tree)


def test_log_mining_of_a_non_string_field_is_refused(tree: Path):
    path = tree / "operational" / "ingest_events.yaml"
    _edit(path, lambda d: d["sources"]["log"]["datafy"]["logs"].update(field="event_time"))
    with pytest.raises(CrmError, match=r"sources.log.datafy.logs.field: 'event_time' is not a string field of log.v1"):
        _load(tree)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(field="likes"), r"sources.social.datafy.text.field: 'likes' is not a string field of social.v1"),
        (dict(model="bert"), r"sources.social.datafy.text.model"),
        (dict(brands={"Brand": []}), r"sources.social.datafy.text.brands: .*'Brand' needs at least one non-empty alias"),
        (dict(products={"Lamp": [" "]}), r"sources.social.datafy.text.products: .*'Lamp' needs at least one non-empty alias"),
    ],
)
def test_bad_text_mining_is_refused(tree: Path, change, message):
    path = tree / "operational" / "ingest_events.yaml"
    _edit(path, lambda d: d["sources"]["social"]["datafy"]["text"].update(change))
    with pytest.raises(CrmError, match=message):
        _load(tree)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(amount="currency"), r"sources.transaction.datafy.orders.amount: 'currency' is not a double or bigint field of transaction.v1"),
        (dict(items="order_id"), r"sources.transaction.datafy.orders.items: 'order_id' is not an array of line items"),
        (dict(rates="conf/none.csv"), r"conf/none.csv: cannot read the currency rate table"),
        (dict(rates="conf/local.yaml"), r"conf/local.yaml: the header must be currency,units_per_base,valid_from"),
        (dict(fx="ecb"), r"sources.transaction.datafy.orders.fx"),
    ],
)
def test_bad_order_datafication_is_refused(tree: Path, change, message):
    path = tree / "operational" / "ingest_events.yaml"
    _edit(path, lambda d: d["sources"]["transaction"]["datafy"]["orders"].update(change))
    with pytest.raises(CrmError, match=message):
        _load(tree)


def test_rate_table_missing_an_allowed_currency_is_refused(tree: Path, tmp_path: Path, monkeypatch):
    from pipelines import config

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "rates.csv").write_text("currency,units_per_base,valid_from\nEUR,1,2000-01-01\nUSD,1.1,2000-01-01\n")
    monkeypatch.setattr(config, "REPO_ROOT", tmp_path)  # a rate table must be in the repository's conf/
    monkeypatch.setattr(config, "CONF_DIR", tmp_path / "conf")
    path = tree / "operational" / "ingest_events.yaml"
    _edit(path, lambda d: d["sources"]["transaction"]["datafy"]["orders"].update(rates="conf/rates.csv"))
    with pytest.raises(CrmError, match=r"datafy.orders.rates: .*rates.csv has no rate for \['GBP'\], which transaction.v1 allows"):
        _load(tree)


def test_parameter_on_a_derived_column_needs_its_datafy_block(tree: Path):
    _edit(tree / "operational" / "ingest_events.yaml", lambda d: d["sources"]["transaction"].pop("datafy"))
    with pytest.raises(CrmError, match=r"parameters\[\d+\] \(monetary_sum_90d\): column: 'amount_base' is not a field of transaction.v1 nor derived"):
        _load(tree)


def test_parameter_on_personal_data_is_pointed_to_its_pseudonym(tree: Path):
    def raw_email(d):
        [param] = [p for p in d["parameters"] if p["name"] == "email_key"]
        param["column"] = "customer_email"

    _edit(tree / "functional" / "customer_metrics.yaml", raw_email)
    with pytest.raises(CrmError, match=r"\(email_key\): column: 'customer_email' is personal data \(hmac\); silver holds it as customer_email_hmac"):
        _load(tree)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(page="schema_version"), r"sources.web.datafy.web.page: 'schema_version' is not a string field of web.v1"),
        (dict(visitor="device_id"), r"sources.web.datafy.web.visitor: 'device_id' is not a string field of web.v1"),
        (dict(session_gap_minutes=0), r"sources.web.datafy.web.session_gap_minutes"),
    ],
)
def test_bad_web_datafication_is_refused(tree: Path, change, message):
    _edit(tree / "operational" / "ingest_events.yaml", lambda d: d["sources"]["web"]["datafy"]["web"].update(change))
    with pytest.raises(CrmError, match=message):
        _load(tree)


def test_cdnow_chain_loads_with_its_purchase_model():
    loaded = _load(REPO / "directives" / "cdnow")
    model = loaded.only("strategic").directive.purchase_model
    functional = loaded.only("functional").directive
    assert model is not None and functional.as_of.isoformat() == "1997-09-30"
    assert set(model.parameters().values()) <= {p.name for p in functional.parameters}


def _strategic_model(d, **change):
    d["purchase_model"].update(change)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: _strategic_model(d, frequency="purchase_days_x"), r"purchase_model.frequency: 'purchase_days_x' is not a parameter"),
        (lambda d: _strategic_model(d, frequency="purchase_span_days"),
         r"purchase_model.frequency: 'purchase_span_days' is measured by 'first_to_last_days'; the model needs a 'repeat_days' parameter"),
        (lambda d: _strategic_model(d, holdout={"purchases": "repeat_purchase_days", "units": 39}),
         r"purchase_model.holdout.purchases: 'repeat_purchase_days' is measured by 'repeat_days'"),
        (lambda d: _strategic_model(d, margin=1.5), r"purchase_model.margin"),
        (lambda d: d["kpis"][0].update(expression="avg(clv2)", uses=["clv2"]),
         r"kpis\[0\] \(customer_lifetime_value\): uses: 'clv2' is not a parameter .* nor an output of its purchase_model"),
        (lambda d: d.pop("purchase_model"), r"kpis\[0\] \(customer_lifetime_value\): uses: 'clv' is not a parameter"),
    ],
)
def test_bad_purchase_model_is_refused(tmp_path: Path, change, message):
    root = tmp_path / "cdnow"
    shutil.copytree(REPO / "directives" / "cdnow", root)
    _edit(root / "strategic" / "customer_value.yaml", change)
    with pytest.raises(CrmError, match=message):
        _load(root)


def test_a_parameter_is_either_windowed_or_a_holdout(tmp_path: Path):
    root = tmp_path / "cdnow"
    shutil.copytree(REPO / "directives" / "cdnow", root)
    _edit(root / "functional" / "purchase_histories.yaml", lambda d: d["parameters"][4].update(window_days=30))
    with pytest.raises(CrmError, match=r"parameters.4: window_days and holdout_days exclude each other"):
        _load(root)


def test_breakdown_grain_must_be_a_column_of_its_sources(tree: Path):
    def grain_typo(d):
        d["breakdowns"][0]["grain"] = "campain_name"

    _edit(tree / "functional" / "customer_metrics.yaml", grain_typo)
    with pytest.raises(CrmError, match=r"breakdowns\[0\] \(by_campaign\): grain: 'campain_name' is not a column of web.v1's silver table"):
        _load(tree)


ATTRIBUTED = {"source": "web", "within_days": 7}


def _conversions(d):  # by_campaign's attributed parameters
    return [p for p in d["breakdowns"][0]["parameters"] if p.get("attributed_by")]


def _attribute_all(d, attribution):
    for p in _conversions(d):
        p["attributed_by"] = attribution


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["parameters"][4].update(attributed_by=ATTRIBUTED),
         r"parameters\[4\] \(frequency_90d\): attributed_by: only a breakdown's parameters are attributed"),
        (lambda d: _conversions(d)[0].pop("attributed_by"),
         r"breakdowns\[0\] \(by_campaign\): parameters\[\d+\] \(\w+\): attributed_by: every transaction parameter of a breakdown is attributed the same way"),
        (lambda d: _attribute_all(d, {"source": "transaction"}),
         r"attributed_by: source: 'transaction' is the parameter's own source"),
        (lambda d: _attribute_all(d, {"source": "weblog"}),
         r"attributed_by: source: 'weblog' is not a source of any operational directive serving functional.customer_metrics"),
        (lambda d: d["breakdowns"][0].update(grain="channel"),  # orders carry a channel, web events do not
         r"breakdowns\[0\] \(by_campaign\): grain: 'channel' is not a column of web.v1's silver table"),
    ],
)
def test_bad_attribution_is_refused(tree: Path, change, message):
    _edit(tree / "functional" / "customer_metrics.yaml", change)
    with pytest.raises(CrmError, match=message):
        _load(tree)


@pytest.mark.parametrize("days", [0, -3, "forever"])
def test_bad_delta_retention_is_refused(tree: Path, days):
    _edit(tree / "operational" / "ingest_events.yaml", lambda d: d["sources"]["web"].update(delta_retention_days=days))
    with pytest.raises(CrmError, match=r"sources.web.delta_retention_days"):
        _load(tree)


@pytest.mark.parametrize("rates", ["../../../etc/passwd", "/etc/passwd", "conf/../pyproject.toml"])
def test_a_rate_table_outside_conf_is_refused(tmp_path, base_profile, rates):
    root = tmp_path / "directives"
    shutil.copytree(base_profile.directives, root, ignore=shutil.ignore_patterns("cdnow"))
    path = root / "operational" / "ingest_events.yaml"
    path.write_text(path.read_text().replace("rates: conf/currency_rates.csv", f"rates: {rates}"))
    with pytest.raises(CrmError, match=r"sources.transaction.datafy.orders.rates: .* leads outside .*conf; refused"):
        load_directives(root, base_profile.schemas)


def test_a_directive_that_links_out_of_its_folder_is_refused(tree: Path, tmp_path: Path):
    outside = tmp_path / "elsewhere.yaml"
    shutil.copy(tree / "operational" / "ingest_events.yaml", outside)
    (tree / "operational" / "ingest_events.yaml").unlink()
    (tree / "operational" / "ingest_events.yaml").symlink_to(outside)
    with pytest.raises(CrmError, match=r"^directive: .*operational/ingest_events.yaml -> .*elsewhere.yaml leads outside .*directives; refused$"):
        _load(tree)


def test_a_schema_that_links_out_of_its_folder_is_refused(tree: Path, tmp_path: Path):
    schemas = tmp_path / "schemas"
    shutil.copytree(REPO / "schemas", schemas)
    outside = tmp_path / "web.v1.json"
    (schemas / "web.v1.json").rename(outside)
    (schemas / "web.v1.json").symlink_to(outside)
    with pytest.raises(CrmError, match=r"sources.web.schema: schema: .*web.v1.json -> .*/web.v1.json leads outside .*schemas; refused$"):
        load_directives(tree, schemas)


def test_a_rate_table_that_links_out_of_conf_is_refused(tree: Path, tmp_path: Path, monkeypatch):
    from pipelines import config

    (tmp_path / "conf").mkdir()
    (tmp_path / "rates.csv").write_text((REPO / "conf" / "currency_rates.csv").read_text())
    (tmp_path / "conf" / "rates.csv").symlink_to(tmp_path / "rates.csv")
    monkeypatch.setattr(config, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(config, "CONF_DIR", tmp_path / "conf")
    _edit(tree / "operational" / "ingest_events.yaml", lambda d: d["sources"]["transaction"]["datafy"]["orders"].update(rates="conf/rates.csv"))
    with pytest.raises(CrmError, match=r"datafy.orders.rates: .*conf/rates.csv -> .*/rates.csv leads outside .*conf; refused$"):
        _load(tree)


@pytest.mark.parametrize("root", ["directives", "directives/cdnow"])
def test_the_shipped_directives_expressions_all_analyse(spark, root):
    from pipelines.directive_checks import check_expressions

    directives = load_directives(REPO / root, REPO / "schemas")
    kpis = sum(len(s.directive.kpis) for s in directives.strategic.values())
    assert check_expressions(spark, directives) > kpis


def _first_filtered(doc: dict) -> dict:
    return next(p for p in doc["parameters"] if p.get("filter"))


def _first_scored_breakdown(doc: dict) -> dict:
    return next(b for b in doc["breakdowns"] if b.get("scores"))


@pytest.mark.parametrize(
    ("file", "edit", "named"),
    [
        ("functional/customer_metrics.yaml", lambda d: _first_filtered(d).update(filter="no_such_column > 1"), "parameters ("),
        ("functional/customer_metrics.yaml", lambda d: d["segmentation"]["scores"][0].update(expression="r_score +* 2"), "segmentation.scores ("),
        ("functional/customer_metrics.yaml", lambda d: _first_scored_breakdown(d)["scores"][0].update(expression="no_such_parameter * 2"), "scores ("),
        ("strategic/customer_value.yaml", lambda d: d["kpis"][0].update(expression=d["kpis"][0]["expression"] + " +"), "kpis ("),
        (
            "strategic/customer_value.yaml",
            lambda d: d["recommendations"]["rules"][0].update(when=d["recommendations"]["rules"][0]["when"] + " AND no_such_column > 3"),
            "recommendations.rules[0] (",
        ),
    ],
)
def test_check_analyses_every_expression_before_any_data(spark, tree: Path, file, edit, named):
    """Each of these loads (names and references are right) and used to fail only when CRFM or CRSM started."""
    from pipelines.directive_checks import check_expressions

    _edit(tree / file, edit)
    broken = _load(tree)
    with pytest.raises(CrmError) as err:
        check_expressions(spark, broken)
    assert str(tree / file) in str(err.value) and named in str(err.value)

#!/usr/bin/env python3
"""Checks a kbuild run report against docs/run-report.schema.json and reads
a JUnit file with junitparser, the parser that common CI report actions use.
Prints one JSON summary on stdout; exits non-zero when either check fails.

Usage: check_reports.py SCHEMA REPORT.json JUNIT.xml
"""

import json
import sys

import jsonschema
import junitparser


def main(schema_path, report_path, junit_path):
    with open(schema_path) as file:
        schema = json.load(file)
    with open(report_path) as file:
        report = json.load(file)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.path))
    if errors:
        for error in errors:
            print(f"{report_path}: {list(error.path)}: {error.message}", file=sys.stderr)
        return 1

    xml = junitparser.JUnitXml.fromfile(junit_path)
    cases = []
    suites = list(xml) if isinstance(xml, junitparser.JUnitXml) else [xml]
    for suite in suites:
        for case in suite:
            results = case.result
            kind = results[0].__class__.__name__.lower() if results else "passed"
            cases.append({
                "suite": suite.name,
                "classname": case.classname,
                "name": case.name,
                "result": kind,
                "message": results[0].message if results else None,
                "text": results[0].text if results else None,
            })
    print(json.dumps({"status": report["status"], "cases": cases,
                      "tests": sum(s.tests for s in suites),
                      "failures": sum(s.failures for s in suites),
                      "errors": sum(s.errors for s in suites),
                      "skipped": sum(s.skipped for s in suites)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))

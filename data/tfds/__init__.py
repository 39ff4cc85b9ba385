"""TFDS builders for the forensic datasets (manual download), one folder each. Import one to register it:

    import data.tfds.dso1   # registers 'dso1'
    tfds.builder('dso1', data_dir=D).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=MANUAL), file_format='array_record')
then use the spec `tfds:dso1:test` (with TFDS_DATA_DIR=D). `import data.tfds.all` registers every one.

Test sets (split 'test'): columbia, dso1, casia_v1, nist16, coverage, korus, in_the_wild, cocoglide, misd.
Training sets (split 'train'): casia_v2, tamp_coco, imd2020. Each module's docstring names the release
and its folder layout (`mpc_jax.data.layouts` lists them; FF++ is not supported, see there).
"""

BUILDERS = (
  "columbia",
  "dso1",
  "casia_v1",
  "nist16",
  "coverage",
  "korus",
  "in_the_wild",
  "cocoglide",
  "misd",
  "casia_v2",
  "tamp_coco",
  "imd2020",
)

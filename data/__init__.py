"""TFDS builders for standard forensic datasets (manual download). Import a module to register it:

    import data.tfds.casia_v2   # registers 'casia_v2'
    tfds.builder('casia_v2', data_dir=D).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=MANUAL), file_format='array_record')
then use the spec `tfds:casia_v2:train` (with TFDS_DATA_DIR=D).
"""

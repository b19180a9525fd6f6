"""gcp-storage-emulator, with the one header of GCS's media download that it leaves out:
x-goog-generation. tensorstore (orbax's array writer) reads an object's generation from it and
makes its conditional writes with it (OCDBT's manifest); without it every checkpoint save fails
with 'Malformed StorageGeneration'. Run as the emulator's own command line:
python tests/gcs_emulator.py start --port=... --in-memory"""
import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
    except Exception:  # noqa: BLE001 - not found: the real handler set the status
        return
    response['x-goog-generation'] = str(obj['generation'])
    response['x-goog-metageneration'] = str(obj.get('metageneration', 1))


objects.download = download  # before the server module builds its routing table

if __name__ == '__main__':
    from gcp_storage_emulator.__main__ import main
    sys.exit(main())

"""A ThingsBoard device built on the official Python SDK (tb-mqtt-client), pointed at Updraft.

Usage: tb_sdk_update.py HOST PORT TOKEN CHUNK_SIZE
Connects with the access token, asks for its firmware with get_firmware_update(), lets the SDK
download (in chunks of CHUNK_SIZE bytes, 0 for one message), verify and report its states, writes
the image to ./<fw_title> and reports UPDATED. Exits 0 once the server has acknowledged UPDATED.
"""
import logging
import sys
import threading

from tb_device_mqtt import TBDeviceMqttClient, TBFirmwareState

host, port, token, chunk_size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
logging.basicConfig(level=logging.WARNING)
done = threading.Event()
connected = threading.Event()

client = TBDeviceMqttClient(host, port=port, username=token, chunk_size=chunk_size)


def on_firmware(tb_client, firmware_data, version_to):
    tb_client.update_firmware_info(state=TBFirmwareState.UPDATING)
    title = tb_client.firmware_info.get("fw_title")
    with open(title, "wb") as image:
        image.write(firmware_data)
    tb_client.current_firmware_info["current_fw_title"] = title
    tb_client.current_firmware_info["current_fw_version"] = version_to
    tb_client.current_firmware_info["fw_state"] = TBFirmwareState.UPDATED.value
    # Wait for the server's acknowledgement of UPDATED before saying we are done.
    tb_client.send_telemetry(tb_client.current_firmware_info).get()
    done.set()


def on_connect(*args, **kwargs):
    connected.set()


client.set_on_firmware_received_callback(on_firmware)
client.connect(callback=on_connect)
# The SDK may see the CONNACK before it registers the callback: also ask it directly.
for _ in range(300):
    if connected.wait(0.1) or client.is_connected():
        break
else:
    print("no CONNACK", file=sys.stderr)
    sys.exit(2)
client.get_firmware_update()
ok = done.wait(120)
client.disconnect()
print("UPDATED" if ok else "timed out")
sys.exit(0 if ok else 1)

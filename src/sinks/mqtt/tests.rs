//! Tests of the MQTT sink against a real Mosquitto (firmware-sim's test bed) on a free
//! loopback port.

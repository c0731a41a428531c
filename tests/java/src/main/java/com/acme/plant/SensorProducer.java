package com.acme.plant;

import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.InputStreamReader;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Future;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Reads readings from stdin, one a line: {@code sensor_id <TAB> epoch_millis <TAB> name=value,name=value...},
 * and produces each as an Avro GenericRecord in the Confluent wire format (magic byte 0, the
 * 4-byte big-endian schema id, the Avro binary), the schema registered under {@code <topic>-value}.
 * Usage: SensorProducer BOOTSTRAP TOPIC REGISTRY_URL
 */
public final class SensorProducer {
    static final String SCHEMA = "{\"type\":\"record\",\"name\":\"SensorReading\",\"namespace\":\"com.acme.plant\","
            + "\"fields\":[{\"name\":\"sensor_id\",\"type\":\"string\"},"
            + "{\"name\":\"ts\",\"type\":{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}},"
            + "{\"name\":\"values\",\"type\":{\"type\":\"map\",\"values\":\"double\"}},"
            + "{\"name\":\"line\",\"type\":\"string\",\"default\":\"unknown\"}]}";

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1], registry = args[2];
        Schema schema = new Schema.Parser().parse(SCHEMA);
        int id = register(registry, topic + "-value", SCHEMA);
        GenericDatumWriter<GenericRecord> writer = new GenericDatumWriter<>(schema);
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("linger.ms", "5");
        props.put("acks", "all");
        List<Future<RecordMetadata>> sent = new ArrayList<>();
        try (KafkaProducer<String, byte[]> producer =
                     new KafkaProducer<>(props, new StringSerializer(), new ByteArraySerializer());
             BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            for (String line; (line = in.readLine()) != null; ) {
                if (line.isBlank()) continue;
                String[] parts = line.split("\t");
                Map<String, Double> values = new LinkedHashMap<>();
                for (String kv : parts[2].split(",")) {
                    String[] p = kv.split("=", 2);
                    values.put(p[0], Double.parseDouble(p[1]));
                }
                GenericRecord r = new GenericData.Record(schema);
                r.put("sensor_id", parts[0]);
                r.put("ts", Long.parseLong(parts[1]));
                r.put("values", values);
                r.put("line", "L7");
                ByteArrayOutputStream out = new ByteArrayOutputStream();
                out.write(0);
                out.write(ByteBuffer.allocate(4).putInt(id).array());
                BinaryEncoder enc = EncoderFactory.get().binaryEncoder(out, null);
                writer.write(r, enc);
                enc.flush();
                sent.add(producer.send(new ProducerRecord<>(topic, parts[0], out.toByteArray())));
            }
            producer.flush();
            for (Future<RecordMetadata> f : sent) f.get();  // any failed send throws here
        }
        System.out.println("sent " + sent.size() + " records with schema id " + id);
    }

    /** POST the schema to the registry's Confluent API; returns its id. */
    static int register(String url, String subject, String schema) throws Exception {
        String body = "{\"schema\":\"" + schema.replace("\\", "\\\\").replace("\"", "\\\"") + "\"}";
        HttpRequest req = HttpRequest.newBuilder(URI.create(url + "/subjects/" + subject + "/versions"))
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .POST(HttpRequest.BodyPublishers.ofString(body)).build();
        HttpResponse<String> resp = HttpClient.newHttpClient().send(req, HttpResponse.BodyHandlers.ofString());
        Matcher m = Pattern.compile("\"id\"\\s*:\\s*(\\d+)").matcher(resp.body());
        if (resp.statusCode() != 200 || !m.find()) {
            throw new IllegalStateException("registry answered " + resp.statusCode() + ": " + resp.body());
        }
        return Integer.parseInt(m.group(1));
    }
}

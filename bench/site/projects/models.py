"""Construction cost-estimate projects, shaped like the incident's application:
a project has priced resources ("harga items": labour, materials, equipment), a
tree of work items ("pekerjaan": classification > sub-classification > item),
each leaf composed of resources with coefficients (its unit-price analysis), and
a weekly schedule ("jadwal") per leaf.
"""
from django.db import models


class Project(models.Model):
    nama = models.CharField(max_length=200)
    lokasi = models.CharField(max_length=200)
    tahun = models.PositiveIntegerField()
    ppn_persen = models.DecimalField(max_digits=5, decimal_places=2, default=11)
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return self.nama


class HargaItem(models.Model):
    TENAGA, BAHAN, ALAT = "TK", "BHN", "ALT"
    KATEGORI = [(TENAGA, "Tenaga kerja"), (BAHAN, "Bahan"), (ALAT, "Peralatan")]

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="harga_items")
    kode = models.CharField(max_length=20)
    uraian = models.CharField(max_length=200)
    satuan = models.CharField(max_length=20)
    kategori = models.CharField(max_length=3, choices=KATEGORI)
    harga_satuan = models.DecimalField(max_digits=14, decimal_places=2)

    class Meta:
        ordering = ["kategori", "kode"]
        indexes = [models.Index(fields=["project", "kategori"])]


class Pekerjaan(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="pekerjaan")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    level = models.PositiveSmallIntegerField()  # 1 klasifikasi, 2 sub-klasifikasi, 3 pekerjaan
    kode = models.CharField(max_length=20)
    uraian = models.CharField(max_length=200)
    satuan = models.CharField(max_length=20, blank=True)
    volume = models.DecimalField(max_digits=14, decimal_places=3, default=0)
    urutan = models.PositiveIntegerField()

    class Meta:
        ordering = ["urutan"]
        indexes = [models.Index(fields=["project", "urutan"])]


class PekerjaanDetail(models.Model):
    """One line of a work item's unit-price analysis: resource x coefficient."""

    pekerjaan = models.ForeignKey(Pekerjaan, on_delete=models.CASCADE, related_name="details")
    harga_item = models.ForeignKey(HargaItem, on_delete=models.CASCADE, related_name="+")
    koefisien = models.DecimalField(max_digits=12, decimal_places=4)


class Jadwal(models.Model):
    """Share (percent) of a work item done in a given week."""

    pekerjaan = models.ForeignKey(Pekerjaan, on_delete=models.CASCADE, related_name="jadwal")
    minggu = models.PositiveSmallIntegerField()
    bobot = models.DecimalField(max_digits=6, decimal_places=2)

    class Meta:
        ordering = ["minggu"]
